"""Stage 1: a PyTorch model becomes a Workload (formula registry, tracer, recipes, model zoo)."""
