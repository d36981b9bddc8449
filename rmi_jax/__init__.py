"""Region Mutual Information (RMI) loss for JAX: pure, ``jit``- and ``vmap``-compatible."""

from rmi_core import __version__ as __version__  # the distribution's one version
from rmi_core import require_framework

require_framework("jax", "JAX", extra="jax")

from rmi_core.terms import LossTerms  # noqa: E402
from rmi_jax.api import rmi_loss  # noqa: E402
from rmi_jax.labels import rmi_loss_from_labels  # noqa: E402

__all__ = ["LossTerms", "rmi_loss", "rmi_loss_from_labels"]
