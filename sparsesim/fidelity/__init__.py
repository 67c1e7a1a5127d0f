"""Checks of the models against reality: measurement, calibration, validation."""
