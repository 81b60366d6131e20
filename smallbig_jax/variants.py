"""The SmallBigNet family as data: each variant's blocks per stage, their kind and the official name.

Plain dataclasses, no JAX: a config names its variant and is checked against this table (`smallbig_jax.config`)
without loading the network, which `smallbig_jax.models` builds from it. (It lives outside `models/` because
importing anything there loads the network, Flax and JAX.)
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class BlockKind:
    """What a stage's blocks are; official names `Bottleneck3D_000`, `Bottleneck3D_100[_extra]`,
    `SmallBig_module[_extra]`."""

    big_views: bool = False  # SmallBig: big view on each of the three convs
    temporal_conv1: bool = False  # slowonly: conv1 is 3x1x1
    extra: bool = False  # the global-max-pool context gate before the block body


BOTTLENECK = BlockKind()  # Bottleneck3D_000: the ResNet bottleneck alone
SMALLBIG = BlockKind(big_views=True)
SMALLBIG_EXTRA = BlockKind(big_views=True, extra=True)
SLOW = BlockKind(temporal_conv1=True)
SLOW_EXTRA = BlockKind(temporal_conv1=True, extra=True)


@dataclasses.dataclass(frozen=True)
class Variant:
    depths: tuple[int, int, int, int]
    blocks: tuple[BlockKind, BlockKind, BlockKind, BlockKind]
    official_name: str


VARIANTS: dict[str, Variant] = {
    "res50": Variant((3, 4, 6, 3), (BOTTLENECK,) * 4, "res50"),
    "slowonly50": Variant((3, 4, 6, 3), (BOTTLENECK, BOTTLENECK, SLOW, SLOW), "slowonly50"),
    "slowonly50_extra": Variant((3, 4, 6, 3), (BOTTLENECK, BOTTLENECK, SLOW_EXTRA, SLOW_EXTRA), "slowonly50_extra"),
    "smallbig23": Variant((1, 2, 3, 1), (BOTTLENECK,) + (SMALLBIG,) * 3, "smallbig23_no_extra"),
    "smallbig50": Variant((3, 4, 6, 3), (BOTTLENECK,) + (SMALLBIG,) * 3, "smallbig50_no_extra"),
    "smallbig101": Variant((3, 4, 23, 3), (BOTTLENECK,) + (SMALLBIG,) * 3, "smallbig101_no_extra"),
    "smallbig50_extra": Variant((3, 4, 6, 3), (BOTTLENECK,) + (SMALLBIG_EXTRA,) * 3, "smallbig50_extra"),
}
