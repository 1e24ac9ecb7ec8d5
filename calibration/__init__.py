"""skyfix.calibration."""
