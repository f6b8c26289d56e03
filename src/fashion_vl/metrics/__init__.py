"""Evaluation protocols: vectorised, device-agnostic, and exact on ties (see ``retrieval``)."""
