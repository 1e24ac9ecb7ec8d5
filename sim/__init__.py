"""skyfix.sim."""
