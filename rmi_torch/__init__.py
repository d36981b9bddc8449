"""Region Mutual Information (RMI) loss for PyTorch, matching ``rmi_jax`` value for value."""

from rmi_core import __version__ as __version__  # the distribution's one version
from rmi_core import require_framework

require_framework("torch", "PyTorch", extra="torch")

from rmi_core.terms import LossTerms  # noqa: E402
from rmi_torch.api import RMILoss, rmi_loss  # noqa: E402
from rmi_torch.labels import LabelRMILoss, rmi_loss_from_labels  # noqa: E402

__all__ = ["LabelRMILoss", "LossTerms", "RMILoss", "rmi_loss", "rmi_loss_from_labels"]
