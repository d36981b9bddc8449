"""The binary cross-entropy term."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# PyTorch clamps each log term of binary_cross_entropy at -100 (so p = 0 or 1 stays finite).
_LOG_CLAMP = -100.0


class _ProbabilityBCE(torch.autograd.Function):
    """PyTorch's elementwise ``binary_cross_entropy``, with a finite gradient for the target.

    PyTorch differentiates the target term as ``log(1 - p) - log(p)`` without its forward clamp,
    which is infinite at ``p = 0`` or ``1``; here both log terms are clamped at -100 there too.
    """

    @staticmethod
    def forward(ctx, p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(p, y)
        return F.binary_cross_entropy(p, y, reduction="none")

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        p, y = ctx.saved_tensors
        grad_p = grad_y = None
        if ctx.needs_input_grad[0]:
            # PyTorch's own derivative, so the two backends agree where p (1 - p) underflows.
            grad_p = grad * (p - y) / (p * (1 - p)).clamp_min(1e-12)
        if ctx.needs_input_grad[1]:
            log_p = torch.log(p).clamp_min(_LOG_CLAMP)
            log_not_p = torch.log1p(-p).clamp_min(_LOG_CLAMP)
            grad_y = grad * (log_not_p - log_p)
        return grad_p, grad_y


def bce_term(
    input: torch.Tensor,
    target: torch.Tensor,
    with_logits: bool,
    per_example: bool,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean elementwise BCE: per example (``[N]``) or over everything (a scalar).

    Every example has the same number of elements, so the scalar is the mean of the per-example
    values; with logits it is one fused kernel with no full-size output, which is why it is
    preferred whenever the caller reduces over the batch anyway. With a boolean ``mask``
    (broadcastable to ``input``) each example's mean is over its true entries only, and the
    scalar is the mean of those per-example means.
    """
    if mask is not None:
        elementwise = _elementwise(input, target, with_logits)
        mask = mask.expand_as(elementwise).flatten(1)
        summed = torch.where(mask, elementwise.flatten(1), 0.0).sum(dim=1)
        per_example_mean = summed / mask.sum(dim=1)
        return per_example_mean if per_example else per_example_mean.mean()
    if not with_logits:
        elementwise = _ProbabilityBCE.apply(input, target)
        return elementwise.flatten(1).mean(dim=1) if per_example else elementwise.mean()
    if per_example:
        return _elementwise(input, target, with_logits).flatten(1).mean(1)
    return F.binary_cross_entropy_with_logits(input, target, reduction="mean")


def _elementwise(input: torch.Tensor, target: torch.Tensor, with_logits: bool) -> torch.Tensor:
    if with_logits:
        return F.binary_cross_entropy_with_logits(input, target, reduction="none")
    return _ProbabilityBCE.apply(input, target)
