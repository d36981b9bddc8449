"""The literal RMI algorithm in PyTorch: the benchmark's stand-in baseline.

Written step by step from the dense semantics, docs/semantics.md#dense-targets (BCE, sigmoid,
max pool, ``F.unfold`` regions, centring, the three Gram matrices, an explicit inverse, a Cholesky
factor) so that it costs what the existing implementations cost: the benchmarks compare the
project's backends against it, and ``test_reference.py`` checks it against the float64 reference.
It lives here, not in ``benchmarks/``, so that the benchmarks depend on ``parity_tests`` and never
the other way round. It is deliberately *not* optimised and not part of the public packages.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["baseline_rmi_loss"]

# The reference adds this inside the log of the Cholesky diagonal: a parity quirk
# (docs/semantics.md#dense-targets, step 7).
_CHOLESKY_LOG_OFFSET = 1e-8


def baseline_rmi_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    double: bool,
    radius: int = 3,
    stride: int = 3,
    bce_weight: float = 0.5,
    epsilon: float = 5e-4,
) -> torch.Tensor:
    """Dense-target RMI loss of logits ``[N, C, H, W]`` against a target of the same shape.

    ``loss = w * BCE + (1 - w) * mean_n sum_c 0.5 * logdet(M + eps I) / d`` with
    ``M = Syy - Syp (Spp + eps I)^-1 Syp^T`` over the ``d = radius**2`` region vectors of the
    max-pooled (kernel = stride = ``stride``, padding ``stride // 2``) maps.

    Args:
        logits: prediction logits, float tensor ``[N, C, H, W]``.
        target: binary or soft target, same shape.
        double: compute the statistics in float64 (``use_double_precision=True``) or in the
            input dtype.
        radius: side of the square region.
        stride: pooling kernel and stride (1 skips pooling).
        bce_weight: weight ``w`` of the BCE term.
        epsilon: the ``eps`` added before the inverse and before the Cholesky factorisation.

    Returns:
        The scalar loss (float64 when ``double``, else the input dtype).
    """
    if logits.shape != target.shape or logits.ndim != 4:
        raise ValueError(
            f"logits and target must both be [N, C, H, W]; got {tuple(logits.shape)} and "
            f"{tuple(target.shape)}"
        )
    target = target.to(logits.dtype)

    # 1. BCE term: mean over all N*C*H*W elements, skipped (not just zeroed) at weight 0.
    bce: torch.Tensor | float = 0.0
    if bce_weight != 0:
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="mean") * bce_weight

    # 2-3. Probabilities, then max pool of both maps; -inf padding means padding never wins.
    probs = torch.sigmoid(logits)
    if stride > 1:
        probs = F.max_pool2d(probs, kernel_size=stride, stride=stride, padding=stride // 2)
        target = F.max_pool2d(target, kernel_size=stride, stride=stride, padding=stride // 2)

    # 4. Region vectors [N, C, d, L]; unfold orders its rows channel-major, then window
    #    row, then window column, so the view splits channels from offsets exactly.
    n, c, h, w = probs.shape
    if h < radius or w < radius:
        raise ValueError(f"downsampled map {h}x{w} is smaller than the radius {radius}")
    d = radius * radius
    p = F.unfold(probs, kernel_size=radius).view(n, c, d, -1)
    y = F.unfold(target, kernel_size=radius).view(n, c, d, -1)

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
