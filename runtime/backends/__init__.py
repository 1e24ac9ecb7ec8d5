"""skyfix.runtime.backends."""
