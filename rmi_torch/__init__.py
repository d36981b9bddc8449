"""Region Mutual Information (RMI) loss for PyTorch, matching ``rmi_jax`` value for value."""

from rmi_torch.api import RMILoss, rmi_loss
from rmi_torch.labels import LabelRMILoss, rmi_loss_from_labels

__all__ = ["LabelRMILoss", "RMILoss", "rmi_loss", "rmi_loss_from_labels"]
