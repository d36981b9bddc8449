"""The binary cross-entropy term."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

# Where softplus may return its input unchanged: exp(-40) is below float64 rounding of 40.
_SOFTPLUS_EXACT_ABOVE = 40.0
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


class _LogitBCESums(torch.autograd.Function):
    """Per-example sums of the elementwise BCE with logits, over the entries ``mask`` keeps.

    PyTorch's own ``binary_cross_entropy_with_logits`` is several full-size passes each way;
    here the forward is two (``softplus(x) - x y``, then the sum) and the backward three
    (``sigmoid(x) - y`` scaled), which matters because these are the loss's only passes over
    the full-resolution maps besides the pooling.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, y, mask)
        # softplus(x) = max(x, 0) + log1p(exp(-|x|)); above the threshold it returns x, whose
        # error exp(-x) < 5e-18 is below float64 rounding, and exp(40) cannot overflow float32.
        elementwise = F.softplus(x, threshold=_SOFTPLUS_EXACT_ABOVE).addcmul_(x, y, value=-1.0)
        if mask is not None:
            elementwise = elementwise.masked_fill_(~mask, 0.0)
        return elementwise.flatten(1).sum(dim=1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, y, mask = ctx.saved_tensors
        scale = grad.view(-1, *([1] * (x.dim() - 1)))
        grad_x = grad_y = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.sigmoid(x).sub_(y).mul_(scale)
        if ctx.needs_input_grad[1]:
            grad_y = x * -scale
        if mask is not None:
            grad_x = None if grad_x is None else grad_x.masked_fill_(~mask, 0.0)
            grad_y = None if grad_y is None else grad_y.masked_fill_(~mask, 0.0)
        return grad_x, grad_y, None


def bce_term(
    input: torch.Tensor,
    target: torch.Tensor,
    with_logits: bool,
    per_example: bool,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean elementwise BCE: per example (``[N]``) or the mean of those (a scalar).

    With a boolean ``mask`` (broadcastable to ``input``) each example's mean is over its true
    entries only.
    """
    if mask is not None:
        mask = mask.expand_as(input)
    if with_logits:
        sums = _LogitBCESums.apply(input, target, mask)
    else:
        elementwise = _ProbabilityBCE.apply(input, target)
        if mask is not None:
            elementwise = torch.where(mask, elementwise, 0.0)
        sums = elementwise.flatten(1).sum(dim=1)
    counts = input[0].numel() if mask is None else mask.flatten(1).sum(dim=1)
    per_example_mean = sums / counts
    return per_example_mean if per_example else per_example_mean.mean()
