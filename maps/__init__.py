"""skyfix.maps."""
