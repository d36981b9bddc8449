"""Region Mutual Information (RMI) loss for JAX: pure, ``jit``- and ``vmap``-compatible."""

from rmi_jax.api import rmi_loss
from rmi_jax.labels import rmi_loss_from_labels

__all__ = ["rmi_loss", "rmi_loss_from_labels"]
