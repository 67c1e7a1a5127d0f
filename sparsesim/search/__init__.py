"""Co-design search: per-layer masks that trade real accuracy against modeled cost."""
