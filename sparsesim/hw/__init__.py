"""Device files: strict loading of the data that describes one chip."""
