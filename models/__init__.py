"""skyfix.models."""
