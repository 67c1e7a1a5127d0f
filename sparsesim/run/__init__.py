"""Stage 3: the one costing path (estimate/compare), result tables, and simulation."""
