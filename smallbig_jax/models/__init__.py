"""SmallBigNet models."""

from smallbig_jax.models.formulations import FORMULATIONS, resolve_formulation
from smallbig_jax.models.layers import Formulation
from smallbig_jax.models.smallbig import (
    REMAT_POLICIES,
    VARIANTS,
    SmallBigNet,
    build_model,
    count_params,
    set_batchnorm_groups,
)

__all__ = [
    "FORMULATIONS",
    "REMAT_POLICIES",
    "VARIANTS",
    "Formulation",
    "SmallBigNet",
    "build_model",
    "count_params",
    "resolve_formulation",
    "set_batchnorm_groups",
]
