"""The CPU family's kernel names, apart from its cost model: the CLI lists them without loading
the family (`cost.families.cpu`)."""

from __future__ import annotations

# XNNPACK's sparse inference: SpMM over CHW activations (Elsen et al. 2020)
SPMM = "xnnpack-spmm"
# a sparse GEMM compiled for one weight's pattern (DeepSparse-class; LIBXSMM's sparse JIT, Heinecke
# et al. SC'16): each nonzero's column offset is an immediate of its own multiply-add, so there is
# no index chain to wait on, and it takes linears (tokens as the vector dimension) and stride-1
# convolutions (a direct sparse convolution); work spread over output rows as well as tiles
JIT_SPMM = "jit-spmm"
SPMM_KERNELS = (SPMM, JIT_SPMM)
# an activation-sparse GEMV (PowerInfer's CPU kernels, Song et al. SOSP'24; Deja Vu's sparse MLP):
# the weight stored input-channel major, only the rows of the nonzero inputs read
ACT_GEMV = "act-gemv"
# the CPU kernels a runtime may list (`runtime.<name>.kernels`); torch's run through `_sparse`
TORCH_KERNELS = {"unstructured": "csr", "block": "bsr", "nm": "nm", "vnm": "nm"}
CPU_KERNELS = ("dense", "csr", "bsr", "nm", SPMM, JIT_SPMM, ACT_GEMV)
