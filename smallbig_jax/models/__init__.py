"""SmallBigNet models."""

from smallbig_jax.models.formulations import FORMULATIONS, resolve_formulation
from smallbig_jax.models.layers import Formulation
from smallbig_jax.models.smallbig import (
    VARIANTS,
    SmallBigNet,
    build_model,
    count_params,
    set_batchnorm_groups,
)

__all__ = [
    "FORMULATIONS",
    "VARIANTS",
    "Formulation",
    "SmallBigNet",
    "build_model",
    "count_params",
    "resolve_formulation",
    "set_batchnorm_groups",
]
