"""The binary cross-entropy term."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from rmi_core.geometry import Sizes
from rmi_torch._windows import max_pool_with_indices

# Where softplus may return its input unchanged: exp(-40) is below float64 rounding of 40.
_SOFTPLUS_EXACT_ABOVE = 40.0
# PyTorch clamps each log term of binary_cross_entropy at -100 (so p = 0 or 1 stays finite).
_LOG_CLAMP = -100.0


def _clamped_logs(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``log(p)`` and ``log(1 - p)``, each clamped at -100 as ``binary_cross_entropy`` does."""
    return torch.log(p).clamp_min_(_LOG_CLAMP), torch.log1p(-p).clamp_min_(_LOG_CLAMP)


class _ProbabilityBCE(torch.autograd.Function):
    """PyTorch's elementwise ``binary_cross_entropy``, written out, with a finite gradient for
    the target.

    PyTorch's own raises on a NaN probability (its range check fails), where the loss is to be
    NaN. It differentiates the target term as ``log(1 - p) - log(p)`` without its forward clamp,
    which is infinite at ``p = 0`` or ``1``; here both log terms are clamped at -100 there too.
    """

    @staticmethod
    def forward(ctx, p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(p, y)
        log_p, log_not_p = _clamped_logs(p)
        # -(y log p + (1 - y) log(1 - p)), with two full-size temporaries.
        return log_p.sub_(log_not_p).mul_(y).add_(log_not_p).neg_()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        p, y = ctx.saved_tensors
        grad_p = grad_y = None
        if ctx.needs_input_grad[0]:
            # PyTorch's own derivative, so the two backends agree where p (1 - p) underflows.
            grad_p = grad * (p - y) / (p * (1 - p)).clamp_min(1e-12)
        if ctx.needs_input_grad[1]:
            log_p, log_not_p = _clamped_logs(p)
            grad_y = grad * (log_not_p - log_p)
        return grad_p, grad_y


class _LogitBCESums(torch.autograd.Function):
    """Per-example sums of the elementwise BCE with logits over the entries ``mask`` keeps, and,
    for a ``pool_stride`` (per axis), the logits max-pooled by it (else an empty tensor).

    PyTorch's own ``binary_cross_entropy_with_logits`` is several full-size passes each way;
    here the forward is two (``softplus(x) - x y``, then the sum) and the backward three
    (``sigmoid(x) - y`` scaled). Pooling here too lets the backward add the pooled gradient
    into that same buffer, instead of autograd zero-filling a second full-size gradient and
    adding the two: these are the loss's only passes over the full-resolution maps.
    """

    @staticmethod
    def forward(ctx, x, y, mask, pool_stride: Sizes | None):
        # softplus(x) = max(x, 0) + log1p(exp(-|x|)); above the threshold it returns x, whose
        # error exp(-x) < 5e-18 is below float64 rounding, and exp(40) cannot overflow float32.
        elementwise = F.softplus(x, threshold=_SOFTPLUS_EXACT_ABOVE).addcmul_(x, y, value=-1.0)
        if mask is not None:
            elementwise = elementwise.masked_fill_(~mask, 0.0)
        pooled, indices = x.new_empty(0), None
        if pool_stride:
            pooled, indices = max_pool_with_indices(x, pool_stride)
        ctx.save_for_backward(x, y, mask, indices)
        # Summed over the axes, not over a flattened view: x may have any memory layout.
        return elementwise.sum(dim=tuple(range(1, x.dim()))), pooled

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_sums, grad_pooled):
        x, y, mask, indices = ctx.saved_tensors
        scale = grad_sums.view(-1, *([1] * (x.dim() - 1)))
        grad_x = grad_y = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.sigmoid(x).sub_(y).mul_(scale)
            if indices is not None:
                _add_at_maxima(grad_x, indices, grad_pooled)
        if ctx.needs_input_grad[1]:
            grad_y = x * -scale
        if mask is not None:
            grad_x = None if grad_x is None else grad_x.masked_fill_(~mask, 0.0)
            grad_y = None if grad_y is None else grad_y.masked_fill_(~mask, 0.0)
        return grad_x, grad_y, None, None


# The channels-last memory format of images and of volumes.
_CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


def _add_at_maxima(grad: torch.Tensor, indices: torch.Tensor, values: torch.Tensor) -> None:
    """``grad[n, c, *u] += values[n, c, *v]`` at each pooled cell's maximum ``u``, the flat
    index ``indices[n, c, *v]`` into its map (``max_pool2d``'s and ``max_pool3d``'s indices),
    in place.

    ``grad`` is an elementwise result, so dense in memory, but in the layout of the input.
    Channels-first and channels-last scatter into a view of it; any other layout (a transposed
    view, say) gets each cell's memory offset from the strides. No layout is copied into
    another, and the common layouts build no full-size index tensor. Kernel = stride: the
    windows do not overlap, so no two cells share a pixel.
    """
    batch, channels = grad.shape[:2]
    if grad.is_contiguous():
        planes = grad.view(batch, channels, -1)
        planes.scatter_add_(2, indices.flatten(2), values.flatten(2))
    elif grad.is_contiguous(memory_format=_CHANNELS_LAST[grad.dim()]):
        last = (0, *range(2, grad.dim()), 1)  # the memory order of all three tensors
        pixels = grad.permute(last).view(batch, -1, channels)
        pixels.scatter_add_(
            1, indices.permute(last).flatten(1, -2), values.permute(last).flatten(1, -2)
        )
    else:
        _add_at_strided_maxima(grad, indices, values)


def _add_at_strided_maxima(grad: torch.Tensor, indices: torch.Tensor, values: torch.Tensor) -> None:
    """:func:`_add_at_maxima` for any dense layout, through each cell's memory offset."""
    device, spatial = indices.device, grad.dim() - 2
    offsets = torch.zeros_like(indices)
    remaining = indices.clone()
    for size, stride in zip(reversed(grad.shape[2:]), reversed(grad.stride()[2:]), strict=True):
        offsets += (remaining % size) * stride  # the flat index, last axis first
        remaining = torch.div(remaining, size, rounding_mode="floor")
    ones = (1,) * spatial
    offsets += torch.arange(grad.shape[0], device=device).view(-1, 1, *ones) * grad.stride(0)
    offsets += torch.arange(grad.shape[1], device=device).view(1, -1, *ones) * grad.stride(1)
    storage = grad.as_strided((grad.numel(),), (1,), grad.storage_offset())
    storage.index_add_(0, offsets.flatten(), values.flatten())


def bce_per_example(
    input: torch.Tensor,
    target: torch.Tensor,
    with_logits: bool,
    mask: torch.Tensor | None = None,
    pool_stride: Sizes | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mean elementwise BCE over all but the leading (batch) axis: ``[N, ...] -> [N]``.

    With a boolean ``mask`` (broadcastable to ``input``) each example's mean is over its true
    entries only. The second result is, for logits and a ``pool_stride``, the logits max-pooled
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
        sums = elementwise.sum(dim=tuple(range(1, elementwise.dim())))
    counts = input[0].numel() if mask is None else mask.sum(dim=tuple(range(1, mask.dim())))
    return sums / counts, pooled


def label_bce(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """BCE with logits summed over valid pixels and all classes, over ``valid pixels + 1``.

    ``[N, C, H, W]`` logits and target, ``[N, H, W]`` boolean ``valid``; one number for the
    whole batch, as in the authors' code (the ``+ 1`` keeps an all-ignored batch finite).
    """
    weight = valid.unsqueeze(1).to(logits.dtype)
    summed = F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="sum")
    return summed / (valid.sum() + 1)
