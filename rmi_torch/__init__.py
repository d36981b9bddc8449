"""Region Mutual Information (RMI) loss for PyTorch, matching ``rmi_jax`` value for value."""

from rmi_torch.api import RMILoss, rmi_loss

__all__ = ["RMILoss", "rmi_loss"]
