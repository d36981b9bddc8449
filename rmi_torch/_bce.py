"""The binary cross-entropy term."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from rmi_torch._windows import max_pool_with_indices

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
    """Per-example sums of the elementwise BCE with logits over the entries ``mask`` keeps, and,
    for ``pool_stride > 0``, the logits max-pooled by that stride (else an empty tensor).

    PyTorch's own ``binary_cross_entropy_with_logits`` is several full-size passes each way;
    here the forward is two (``softplus(x) - x y``, then the sum) and the backward three
    (``sigmoid(x) - y`` scaled). Pooling here too lets the backward add the pooled gradient
    into that same buffer, instead of autograd zero-filling a second full-size gradient and
    adding the two: these are the loss's only passes over the full-resolution maps.
    """

    @staticmethod
    def forward(ctx, x, y, mask, pool_stride: int):
        # softplus(x) = max(x, 0) + log1p(exp(-|x|)); above the threshold it returns x, whose
        # error exp(-x) < 5e-18 is below float64 rounding, and exp(40) cannot overflow float32.
        elementwise = F.softplus(x, threshold=_SOFTPLUS_EXACT_ABOVE).addcmul_(x, y, value=-1.0)
        if mask is not None:
            elementwise = elementwise.masked_fill_(~mask, 0.0)
        pooled, indices = x.new_empty(0), None
        if pool_stride:
            pooled, indices = max_pool_with_indices(x, pool_stride)
        ctx.save_for_backward(x, y, mask, indices)
        return elementwise.flatten(1).sum(dim=1), pooled

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_sums, grad_pooled):
        x, y, mask, indices = ctx.saved_tensors
        scale = grad_sums.view(-1, *([1] * (x.dim() - 1)))
        grad_x = grad_y = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.sigmoid(x).sub_(y).mul_(scale)
            if indices is not None:
                # Kernel = stride: the windows do not overlap, so no two cells share a pixel.
                planes = grad_x.view(-1, x.shape[-2] * x.shape[-1])
                planes.scatter_add_(
                    1, indices.flatten(2).flatten(0, 1), grad_pooled.flatten(2).flatten(0, 1)
                )
        if ctx.needs_input_grad[1]:
            grad_y = x * -scale
        if mask is not None:
            grad_x = None if grad_x is None else grad_x.masked_fill_(~mask, 0.0)
            grad_y = None if grad_y is None else grad_y.masked_fill_(~mask, 0.0)
        return grad_x, grad_y, None, None


def bce_term(
    input: torch.Tensor,
    target: torch.Tensor,
    with_logits: bool,
    per_example: bool,
    mask: torch.Tensor | None = None,
    pool_stride: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mean elementwise BCE: per example (``[N]``) or the mean of those (a scalar).

    With a boolean ``mask`` (broadcastable to ``input``) each example's mean is over its true
    entries only. The second result is, for logits and ``pool_stride > 0``, the logits max-pooled
    by that stride, computed alongside (see ``_LogitBCESums``); otherwise ``None``.
    """
    if mask is not None:
        mask = mask.expand_as(input)
    pooled = None
    if with_logits:
        sums, pooled = _LogitBCESums.apply(input, target, mask, pool_stride)
        pooled = pooled if pool_stride else None
    else:
        elementwise = _ProbabilityBCE.apply(input, target)
        if mask is not None:
            elementwise = torch.where(mask, elementwise, 0.0)
        sums = elementwise.flatten(1).sum(dim=1)
    counts = input[0].numel() if mask is None else mask.flatten(1).sum(dim=1)
    per_example_mean = sums / counts
    return (per_example_mean if per_example else per_example_mean.mean()), pooled
