"""Data: readers for the five datasets' on-disk formats, datasets, collation, DataModules, synthesis."""
