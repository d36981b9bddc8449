"""Region Mutual Information (RMI) loss for JAX: pure, ``jit``- and ``vmap``-compatible."""

from rmi_jax.api import rmi_loss

__all__ = ["rmi_loss"]
