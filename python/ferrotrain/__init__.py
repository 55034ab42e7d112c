"""ferrotrain: Lightning's Trainer API with a native loop core."""
