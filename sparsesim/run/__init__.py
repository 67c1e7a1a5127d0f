"""Stage 3: the one costing path (estimate/compare), result tables, and simulation."""

# the plans a comparison costs when none are named: dense, the GPU's 2:4, unstructured and block
# sparsity as CPUs and sparse engines exploit them, and channel pruning (smaller dense ops)
DEFAULT_PLANS = ("dense", "2:4", "unstructured:0.9", "block4x4:0.5", "channel:0.5")
