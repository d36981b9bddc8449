"""The literal RMI algorithm in PyTorch: the benchmark's stand-in baseline.

Written step by step from the dense semantics, docs/semantics.md#dense-targets (BCE, sigmoid,
max pool, unfolded regions, centring, the three Gram matrices, an explicit inverse, a Cholesky
factor) so that it costs what the existing implementations cost: the benchmarks compare the
project's backends against it, and ``test_reference.py`` checks it against the float64 reference.
It lives here, not in ``benchmarks/``, so that the benchmarks depend on ``parity_tests`` and never
the other way round. It is deliberately *not* optimised and not part of the public packages.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["baseline_rmi_loss"]

# The reference adds this inside the log of the Cholesky diagonal: a parity quirk
# (docs/semantics.md#dense-targets, step 7).
_CHOLESKY_LOG_OFFSET = 1e-8


def _per_axis(value: int | tuple[int, ...], rank: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * rank


def baseline_rmi_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    double: bool,
    radius: int | tuple[int, ...] = 3,
    stride: int | tuple[int, ...] = 3,
    bce_weight: float = 0.5,
    epsilon: float = 5e-4,
) -> torch.Tensor:
    """Dense-target RMI loss of logits ``[N, C, H, W]`` (or volumes ``[N, C, D, H, W]``) against
    a target of the same shape.

    ``loss = w * BCE + (1 - w) * mean_n sum_c 0.5 * logdet(M + eps I) / d`` with
    ``M = Syy - Syp (Spp + eps I)^-1 Syp^T`` over the ``d = prod(radius)`` region vectors of the
    max-pooled (kernel = stride = ``stride``, padding ``stride // 2``) maps.

    Args:
        logits: prediction logits, float tensor ``[N, C, *spatial]`` with 2 or 3 spatial axes.
        target: binary or soft target, same shape.
        double: compute the statistics in float64 (``use_double_precision=True``) or in the
            input dtype.
        radius: side of the region box, an int or one per spatial axis.
        stride: pooling kernel and stride (1 skips pooling), an int or one per spatial axis.
        bce_weight: weight ``w`` of the BCE term.
        epsilon: the ``eps`` added before the inverse and before the Cholesky factorisation.

    Returns:
        The scalar loss (float64 when ``double``, else the input dtype).
    """
    if logits.shape != target.shape or logits.ndim not in (4, 5):
        raise ValueError(
            "logits and target must both be [N, C, H, W] or [N, C, D, H, W]; got "
            f"{tuple(logits.shape)} and {tuple(target.shape)}"
        )
    rank = logits.ndim - 2
    radius = _per_axis(radius, rank)
    stride = _per_axis(stride, rank)
    target = target.to(logits.dtype)

    # 1. BCE term: mean over all elements, skipped (not just zeroed) at weight 0.
    bce: torch.Tensor | float = 0.0
    if bce_weight != 0:
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="mean") * bce_weight

    # 2-3. Probabilities, then max pool of both maps; -inf padding means padding never wins.
    probs = torch.sigmoid(logits)
    if any(s > 1 for s in stride):
        pool = F.max_pool2d if rank == 2 else F.max_pool3d
        padding = tuple(s // 2 for s in stride)
        probs = pool(probs, kernel_size=stride, stride=stride, padding=padding)
        target = pool(target, kernel_size=stride, stride=stride, padding=padding)

    # 4. Region vectors [N, C, d, L]: every window of the box at spacing 1, its offsets in
    #    row-major order (the unfolded axes come last), copied out as the seed's unfold does.
    spatial = probs.shape[2:]
    if any(size < r for size, r in zip(spatial, radius, strict=True)):
        raise ValueError(f"downsampled map {tuple(spatial)} is smaller than the region {radius}")
    d = math.prod(radius)

    def regions(x: torch.Tensor) -> torch.Tensor:
        for axis, r in enumerate(radius):
            x = x.unfold(2 + axis, r, 1)
        n, c = x.shape[:2]
        return x.reshape(n, c, -1, d).transpose(-2, -1)

    p = regions(probs)
    y = regions(target)

    # 5. Statistics, in float64 when asked: the float32 normal equations are fragile.
    if double:
        p = p.double()
        y = y.double()
    p = p - p.mean(dim=3, keepdim=True)
    y = y - y.mean(dim=3, keepdim=True)
    spp = p @ p.transpose(-2, -1)
    syy = y @ y.transpose(-2, -1)
    syp = y @ p.transpose(-2, -1)

    # 6. Posterior covariance through an explicit inverse, as the reference does.
    eye = torch.eye(d, dtype=p.dtype, device=p.device)
    m = syy - syp @ torch.linalg.inv(spp + epsilon * eye) @ syp.transpose(-2, -1)

    # 7. Log-determinant through the Cholesky factor, with the reference's +1e-8.
    chol = torch.linalg.cholesky(m + epsilon * eye)
    logdet = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1) + _CHOLESKY_LOG_OFFSET).sum(-1)
    lower_bound = 0.5 * logdet / d  # [N, C]

    # 8. Sum over classes, mean over the batch.
    rmi = lower_bound.sum(dim=1).mean()
    return rmi * (1.0 - bce_weight) + bce
