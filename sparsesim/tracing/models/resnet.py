"""ResNet-18/50 in plain torch, with torchvision's module names (so plans and masks written
for torchvision checkpoints apply unchanged), random init."""

from __future__ import annotations

import torch
import torch.nn as nn

from sparsesim.core.errors import WorkloadError
from sparsesim.tracing.models import check_positive, torch_dtype


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv1x1(cin, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)  # stride on the 3x3, as torchvision (v1.5)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * 4)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, block: type[BasicBlock | Bottleneck], layers: list[int], num_classes: int = 1000) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and not m.weight.is_meta:  # meta: nothing to fill (and
                # torch's meta normal_ imports the compiler stack, seconds for nothing)
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _build(block: type[BasicBlock | Bottleneck], layers: list[int], batch: int, image: int, classes: int, dtype: str,
           seed: int, device: str) -> tuple[nn.Module, tuple[torch.Tensor]]:
    """`device="meta"` builds shapes only (no weights, no arithmetic): a training-size batch of
    256 images traces in a second instead of running a real forward pass on the CPU."""
    check_positive(batch=batch, image=image, classes=classes)
    if device not in ("cpu", "meta"):
        raise WorkloadError(f"device {device!r}: use 'cpu' (real weights) or 'meta' (shapes only)")
    torch.manual_seed(seed)
    dt = torch_dtype(dtype)
    with torch.device(device):
        model = ResNet(block, layers, classes).to(dt).eval()
        x = torch.empty(batch, 3, image, image, dtype=dt) if device == "meta" else torch.randn(batch, 3, image, image, dtype=dt)
    return model, (x,)


def build_resnet18(batch: int = 1, image: int = 224, classes: int = 1000, dtype: str = "fp32",
                   seed: int = 0, device: str = "cpu") -> tuple[nn.Module, tuple[torch.Tensor]]:
    return _build(BasicBlock, [2, 2, 2, 2], batch, image, classes, dtype, seed, device)


def build_resnet50(batch: int = 1, image: int = 224, classes: int = 1000, dtype: str = "fp32",
                   seed: int = 0, device: str = "cpu") -> tuple[nn.Module, tuple[torch.Tensor]]:
    return _build(Bottleneck, [3, 4, 6, 3], batch, image, classes, dtype, seed, device)
