"""SmallBigNet models."""

from smallbig_jax.models.smallbig import VARIANTS, SmallBigNet, build_model, count_params, set_batchnorm_groups

__all__ = ["VARIANTS", "SmallBigNet", "build_model", "count_params", "set_batchnorm_groups"]
