"""SmallBigNet models."""

from smallbig_jax.models.smallbig import VARIANTS, SmallBigNet, build_model, count_params

__all__ = ["VARIANTS", "SmallBigNet", "build_model", "count_params"]
