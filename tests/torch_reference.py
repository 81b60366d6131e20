"""Re-export of `smallbig_jax.torch_reference` (the PyTorch reference model), imported by the conversion tests."""

from smallbig_jax.torch_reference import EXPANSION, VARIANTS, Block, TorchSmallBigNet  # noqa: F401
