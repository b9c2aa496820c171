"""train stage modules."""
