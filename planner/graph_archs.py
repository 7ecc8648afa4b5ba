"""The project's own graph architectures, built by name like torchvision's (planner.graph_models).

`ARCHS` maps an architecture name to a builder `(num_classes) -> nn.Module`; a registry entry
of kind `torchvision-graph` whose `arch` is here is built from this table, any other `arch`
by `torchvision.models.get_model`.  Either way GraphCNN traces the network with torch.fx and
cuts it where the finder says: the same code path, no per-model branch.

`small_resnet`: a ResNet-18 layout (a stem, then 4 stages of 2 torchvision BasicBlocks, the
first block of stages 2-4 striding by 2 with a 1x1 projection) narrowed to `widths`, for small
images: the stem is one 3x3 conv (stride 1) + BN + ReLU, without ResNet's 7x7 stride-2 conv
and max-pooling, which would shrink 28x28 to 7x7 before the first block.  Module names follow
torchvision's ResNet (`conv1`, `bn1`, `layer1`..`layer4`, `avgpool`, `fc`).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, conv1x1


class SmallResNet(nn.Module):
    """(N, in_channels, H, W) normalised -> (N, num_classes) logits."""

    def __init__(self, in_channels: int, widths: tuple[int, ...], blocks: tuple[int, ...], num_classes: int):
        super().__init__()
        if len(widths) != 4 or len(blocks) != 4:
            raise ValueError(f"expected 4 stage widths and 4 block counts, got {widths} and {blocks}")
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        inplanes = widths[0]
        for i, (width, n) in enumerate(zip(widths, blocks)):
            stride = 1 if i == 0 else 2
            down = None
            if stride != 1 or inplanes != width:
                down = nn.Sequential(conv1x1(inplanes, width, stride), nn.BatchNorm2d(width))
            layers = [BasicBlock(inplanes, width, stride, down)]
            layers += [BasicBlock(width, width) for _ in range(n - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))
            inplanes = width
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(inplanes, num_classes)
        for m in self.modules():        # torchvision ResNet's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))                   # (N, w0, H, W)
        x = self.layer1(x)
        x = self.layer2(x)                                       # (N, w1, H/2, W/2)
        x = self.layer3(x)
        x = self.layer4(x)                                       # (N, w3, H/8, W/8) (rounded up)
        return self.fc(torch.flatten(self.avgpool(x), 1))


# architecture name -> builder (num_classes) -> network
ARCHS: dict[str, Callable[[int], nn.Module]] = {
    "small_resnet18_gray": lambda num_classes: SmallResNet(1, (16, 32, 64, 128), (2, 2, 2, 2), num_classes),
}
