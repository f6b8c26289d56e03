"""Small shared helpers (rank-zero logging, rich output)."""
