"""Pattern kinds, one module each (dense, unstructured, N:M, V:N:M, block, channel).

Every module here defines one `PatternKind` and registers it; `sparsesim.sparsity` imports
them all (`register_all`), so adding a kind is adding a module.
"""
