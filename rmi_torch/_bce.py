"""The binary cross-entropy term, averaged per example."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bce_per_example(input: torch.Tensor, target: torch.Tensor, with_logits: bool) -> torch.Tensor:
    """Mean elementwise BCE over all but the leading (batch) axis: ``[N, ...] -> [N]``."""
    bce = F.binary_cross_entropy_with_logits if with_logits else F.binary_cross_entropy
    return bce(input, target, reduction="none").flatten(1).mean(dim=1)
