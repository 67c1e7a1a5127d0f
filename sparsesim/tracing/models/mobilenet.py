"""MobileNetV2 in plain torch with torchvision's module names (features.N.conv.M, classifier.1),
random init. Its depthwise convolutions are the grouped-conv case sparse kernels handle worst."""

from __future__ import annotations

import torch
import torch.nn as nn

from sparsesim.core.errors import WorkloadError
from sparsesim.tracing.models import check_positive, torch_dtype

# (expansion t, output channels c, repeats n, first stride s) from the MobileNetV2 paper, Table 2
INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
    (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)
CHANNEL_DIVISOR = 8  # torchvision rounds every width to a multiple of 8


def _make_divisible(v: float, divisor: int = CHANNEL_DIVISOR) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class ConvBNReLU(nn.Sequential):
    """torchvision's Conv2dNormActivation: 0 conv, 1 batch norm, 2 ReLU6."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = round(cin * expand)
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvBNReLU(cin, hidden, kernel=1))
        layers += [
            ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),  # depthwise
            nn.Conv2d(hidden, cout, 1, 1, 0, bias=False),  # pointwise-linear
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0) -> None:
        super().__init__()
        cin = _make_divisible(32 * width_mult)
        last = _make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [ConvBNReLU(3, cin, stride=2)]
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            cout = _make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        features.append(ConvBNReLU(cin, last, kernel=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


def build_mobilenetv2(batch: int = 1, image: int = 224, classes: int = 1000, width: float = 1.0,
                      dtype: str = "fp32", seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor]]:
    check_positive(batch=batch, image=image, classes=classes)
    if not width > 0:
        raise WorkloadError(f"parameter width={width}: must be > 0")
    torch.manual_seed(seed)
    dt = torch_dtype(dtype)
    model = MobileNetV2(classes, width).to(dt).eval()
    return model, (torch.randn(batch, 3, image, image, dtype=dt),)
