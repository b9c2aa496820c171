"""diff stage modules."""
