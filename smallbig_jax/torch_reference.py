"""A PyTorch SmallBigNet written from `docs/model.md`, with the official module names.

Its `state_dict()` has exactly the keys and shapes of the official code (`models/SmallBig.py`, `models/blocks.py`), so
it serves as the reference for weight conversion (parity tests) and for JAX-vs-PyTorch speed comparisons. It is
not copied from the official repository. Input is `[N, 3, T, H, W]` (NCTHW); `T` must equal `t_length`, as in the
official code (the third big view max-pools over exactly `t_length` frames).

    model = TorchSmallBigNet("smallbig50", num_classes=400, t_length=8).eval()
    model = model.to(memory_format=torch.channels_last_3d)  # optional, faster with oneDNN

Lives in the package (torch is an optional extra, imported here at module level) so that `smallbig-jax benchmark
--compare_torch` can use it; `tests/torch_reference.py` re-exports it for the conversion tests.
"""

from __future__ import annotations

import torch
from torch import nn

# variant -> (depths of layer1..4, block kind of layer1..4); kinds: "plain", "slow", "slow_extra", "sb", "sb_extra".
VARIANTS = {
    "res50": ((3, 4, 6, 3), ("plain", "plain", "plain", "plain")),
    "slowonly50": ((3, 4, 6, 3), ("plain", "plain", "slow", "slow")),
    "slowonly50_extra": ((3, 4, 6, 3), ("plain", "plain", "slow_extra", "slow_extra")),
    "smallbig23": ((1, 2, 3, 1), ("plain", "sb", "sb", "sb")),
    "smallbig50": ((3, 4, 6, 3), ("plain", "sb", "sb", "sb")),
    "smallbig101": ((3, 4, 23, 3), ("plain", "sb", "sb", "sb")),
    "smallbig50_extra": ((3, 4, 6, 3), ("plain", "sb_extra", "sb_extra", "sb_extra")),
}
EXPANSION = 4


def _bn(channels: int) -> nn.BatchNorm3d:
    return nn.BatchNorm3d(channels)  # eps 1e-5, momentum 0.1, affine, running stats (docs/model.md#batchnorm)


class Block(nn.Module):
    """Bottleneck3D_000 / Bottleneck3D_100[_extra] / SmallBig_module[_extra], by `kind`
    (docs/model.md#the-smallbig-block)."""

    def __init__(self, inplanes: int, planes: int, stride: int, kind: str, t_length: int):
        super().__init__()
        out = planes * EXPANSION
        self.kind = kind
        kt = 3 if kind.startswith("slow") else 1
        self.conv1 = nn.Conv3d(inplanes, planes, (kt, 1, 1), padding=(kt // 2, 0, 0), bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = nn.Conv3d(planes, planes, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1), bias=False)
        self.bn2 = _bn(planes)
        self.conv3 = nn.Conv3d(planes, out, 1, bias=False)
        self.bn3 = _bn(out)
        self.relu = nn.ReLU(inplace=True)
        self.big_views = kind.startswith("sb")
        if self.big_views:
            self.big1 = nn.Sequential(nn.MaxPool3d(3, stride=1, padding=1), _bn(planes))
            self.big2 = nn.Sequential(nn.MaxPool3d(3, stride=1, padding=1), _bn(planes))
            self.big3 = nn.Sequential(nn.MaxPool3d((t_length, 3, 3), stride=1, padding=(0, 1, 1)), _bn(out))
        self.extra = kind.endswith("extra")
        if self.extra:
            self.big4_1 = nn.Conv3d(inplanes, inplanes // 4, 1, bias=False)
            self.big4_2 = nn.Sequential(nn.Conv3d(inplanes // 4, inplanes, 1, bias=False), _bn(inplanes))
            self.big_extra = nn.AdaptiveMaxPool3d(1)
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(
                nn.Conv3d(inplanes, out, 1, stride=(1, stride, stride), bias=False), _bn(out)
            )
        else:
            self.downsample = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.extra:
            gate = torch.sigmoid(self.big4_1(self.big_extra(x)))
            x = x + self.big4_2(self.big4_1(x) * gate)
        residual = x if self.downsample is None else self.downsample(x)
        out = self.bn1(self.conv1(x))
        if self.big_views:
            out = out + self.big1[1](self.conv1(self.big1[0](x)))
        out = self.relu(out)
        u = out
        out = self.bn2(self.conv2(u))
        if self.big_views:
            out = out + self.big2[1](self.conv2(self.big2[0](u)))
        out = self.relu(out)
        u = out
        out = self.bn3(self.conv3(u))
        if self.big_views:
            out = out + self.big3[1](self.conv3(self.big3[0](u)))  # [N,C,1,H,W] broadcast over T
        out = out + residual
        return self.relu(out)


class TorchSmallBigNet(nn.Module):
    """SmallBigNet(variant) with official module names: conv1, bn1, maxpool, layer1..4, avgpool, fc."""

    def __init__(self, variant: str, num_classes: int, t_length: int, base_width: int = 64):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; expected one of {sorted(VARIANTS)}")
        depths, kinds = VARIANTS[variant]
        self.t_length = t_length
        self.conv1 = nn.Conv3d(3, base_width, (1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False)
        self.bn1 = _bn(base_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        inplanes = base_width
        for index, (depth, kind) in enumerate(zip(depths, kinds)):
            planes = base_width * 2**index
            blocks = []
            for i in range(depth):
                stride = 2 if (i == 0 and index > 0) else 1
                blocks.append(Block(inplanes, planes, stride, kind, t_length))
                inplanes = planes * EXPANSION
            setattr(self, f"layer{index + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(inplanes, num_classes)
        for name, module in self.named_modules():  # official init (docs/model.md#initialisation)
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm3d) and "big" in name:
                nn.init.zeros_(module.weight)
                nn.init.zeros_(module.bias)

    def stages(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Activations after the stem, each stage, the pooled features and the logits (NCTHW / [N, C])."""
        if x.ndim != 5 or x.shape[1] != 3 or x.shape[2] != self.t_length:
            raise ValueError(f"expected [N, 3, {self.t_length}, H, W], got {tuple(x.shape)}")
        out = {}
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out["stem"] = x
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
            out[name] = x
        x = torch.flatten(self.avgpool(x), 1)
        out["pool"] = x
        out["logits"] = self.fc(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)["logits"]
