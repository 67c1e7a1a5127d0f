"""Stage 2: patterns, masks, stats, formats and plans turn a Workload into a SparseWorkload."""
