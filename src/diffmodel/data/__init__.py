"""data stage modules."""
