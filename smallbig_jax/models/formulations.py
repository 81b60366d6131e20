"""The formulations by name, and the one chosen for a platform ("auto"): what `config.model.formulation` and
`build_model(formulation=...)` name. The layers and the network take a `Formulation`; only this module knows which
exist and which suits which backend."""

from __future__ import annotations

import jax

from smallbig_jax.models.cpu_formulation import CPU
from smallbig_jax.models.layers import PLAIN, Formulation

FORMULATIONS = {"plain": PLAIN, "cpu": CPU}


def resolve_formulation(formulation: str | Formulation, platform: str | None = None) -> Formulation:
    """The `Formulation` named `formulation` ("plain", "cpu", or "auto": "cpu" when `platform`, by default JAX's
    default backend, is "cpu", "plain" elsewhere); a `Formulation` is returned as it is."""
    if isinstance(formulation, Formulation):
        return formulation
    if formulation == "auto":
        return CPU if (platform or jax.default_backend()) == "cpu" else PLAIN
    if formulation not in FORMULATIONS:
        raise ValueError(f"formulation {formulation!r}; expected 'auto' or one of {sorted(FORMULATIONS)}")
    return FORMULATIONS[formulation]
