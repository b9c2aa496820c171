"""preprocess stage modules."""
