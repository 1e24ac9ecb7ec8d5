"""skyfix.runtime: the in-flight pipeline, replay and the `skyfix` command line."""
