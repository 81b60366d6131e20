"""smallbig_jax: SmallBigNet video classification in JAX / Flax NNX."""

__version__ = "0.1.0"
