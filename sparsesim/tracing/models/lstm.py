"""A speech-recognition LSTM with a projection layer (LSTMP), the model sparse LSTM accelerators
were evaluated on: ESE (Han et al., FPGA'17) ran one LSTMP layer of 1024 cells with a 512-wide
projection on 153-dimensional TIMIT features, 3.25M weights (4096 x 153 + 4096 x 512 + 512 x 1024).

The trace is one frame after another (`steps`), as a speech engine runs it: per step the input,
recurrent and projection matrices are matrix-vector products, the gates elementwise ops.
"""

from __future__ import annotations

import torch
from torch import nn

from sparsesim.core.errors import WorkloadError
from sparsesim.tracing.models import check_positive, torch_dtype


def build(batch: int = 1, steps: int = 1, features: int = 153, hidden: int = 1024, proj: int = 512,
          layers: int = 1, dtype: str = "fp32", seed: int = 0, device: str = "cpu"
          ) -> tuple[nn.Module, tuple[torch.Tensor]]:
    """An nn.LSTM with `proj_size` and its input (steps x batch x features)."""
    check_positive(batch=batch, steps=steps, features=features, hidden=hidden, proj=proj, layers=layers)
    if proj >= hidden:
        raise WorkloadError(f"proj={proj}: the projection must be narrower than hidden={hidden}")
    if device not in ("cpu", "meta"):
        raise WorkloadError(f"device {device!r}: use 'cpu' (real weights) or 'meta' (shapes only)")
    torch.manual_seed(seed)
    dt = torch_dtype(dtype)
    with torch.device(device):
        model = nn.LSTM(features, hidden, num_layers=layers, proj_size=proj).to(dt).eval()
        shape = (steps, batch, features)
        x = torch.empty(shape, dtype=dt) if device == "meta" else torch.randn(shape, dtype=dt)
    return model, (x,)
