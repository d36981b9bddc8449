"""Region statistics and the log-determinant of the posterior covariance.

With ``Z = [P; Y]`` the centred region vectors of prediction and target (``2d x L``), the joint
matrix ``J = Z Z^T + eps I`` has the posterior covariance plus ``eps I`` (``M + eps I`` in the
SPEC) as the Schur complement of its leading ``d x d`` block, so the trailing ``d`` diagonal
entries of the Cholesky factor of ``J`` are those of the Cholesky factor of ``M + eps I``.

The factor ``R`` (``R^T R = J``) comes from a shifted Cholesky QR in two passes of the data
``A = [Z^T; sqrt(eps) I]``, never from ``J`` alone: ``J`` is squared data, and in float32 it rounds
away the ``eps``-sized information the loss is made of. Pass one factors ``J + shift I`` with a
shift of a few rounding units of ``trace(J)``, so it cannot fail; pass two factors the Gram
matrix of the well-conditioned ``A R1^-1``, recomputed from the data; ``R = R2 R1``. The same
algorithm as ``rmi_jax._statistics``, so both backends round alike.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from rmi_torch._windows import fold_windows, window_view

# Pass one's shift, in units of (matrix size) * (unit roundoff) * trace(J) (see rmi_jax).
_SHIFT_ROUNDING_UNITS = 1.0
# Bytes of the transformed region vectors formed at a time (see _transformed_gram).
_CHUNK_BYTES = 2 << 20


def _centre_(z: torch.Tensor, window_weights: torch.Tensor | None) -> torch.Tensor:
    """Subtract, in place, from each region-vector component its mean over the windows.

    With ``window_weights`` (``[..., L]``, 0 or 1), windows of weight 0 leave the mean and
    become zero columns, so they leave every covariance too.
    """
    if window_weights is None:
        return z.sub_(z.mean(dim=-1, keepdim=True))
    weights = window_weights.unsqueeze(-2)
    mean = (z * weights).sum(dim=-1, keepdim=True) / weights.sum(dim=-1, keepdim=True)
    return z.sub_(mean).mul_(weights)


def _upper_cholesky(gram: torch.Tensor) -> torch.Tensor:
    return torch.linalg.cholesky(gram, upper=True)


def _triangular_inverse(r: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(r.shape[-1], dtype=r.dtype, device=r.device).expand_as(r)
    return torch.linalg.solve_triangular(r, eye, upper=True)


def _transformed_gram(t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``(t z)(t z)^T`` for ``[..., k, k]`` ``t`` and ``[..., k, L]`` ``z``, a few maps at a time:
    the ``t z`` blocks stay cache-sized and reuse one allocation instead of a full-size copy."""
    flat_t, flat_z = t.reshape(-1, *t.shape[-2:]), z.reshape(-1, *z.shape[-2:])
    step = max(1, _CHUNK_BYTES // (flat_z[0].numel() * flat_z.element_size()))
    blocks = []
    for start in range(0, flat_z.shape[0], step):
        transformed = flat_t[start : start + step] @ flat_z[start : start + step]
        blocks.append(transformed @ transformed.mT)
    return torch.cat(blocks).view(*z.shape[:-1], z.shape[-2])


def _joint_factor(z: torch.Tensor, epsilon: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Upper-triangular R with R^T R = z z^T + epsilon I, and R^-1; z is ``[.., k, L]``."""
    k = z.shape[-2]
    eye = torch.eye(k, dtype=z.dtype, device=z.device)
    gram = z @ z.mT
    trace = torch.diagonal(gram, dim1=-2, dim2=-1).sum(-1)[..., None, None]
    shift = _SHIFT_ROUNDING_UNITS * k * torch.finfo(z.dtype).eps * trace
    r1 = _upper_cholesky(gram + (epsilon + shift) * eye)
    r1_inv = _triangular_inverse(r1)
    # Rows of A R1^-1, transposed: the data part R1^-T Z and the ridge part sqrt(eps) R1^-T.
    r2 = _upper_cholesky(_transformed_gram(r1_inv.mT, z) + epsilon * (r1_inv.mT @ r1_inv))
    return r2 @ r1, r1_inv @ _triangular_inverse(r2)


def _trailing_log_diagonal(r: torch.Tensor, offset: float) -> torch.Tensor:
    k = r.shape[-1]
    diagonal = torch.diagonal(r, dim1=-2, dim2=-1)[..., k // 2 :].abs()
    return torch.log(diagonal + offset).sum(dim=-1)


def _gradient_weights(r: torch.Tensor, r_inv: torch.Tensor, offset: float) -> torch.Tensor:
    """``W`` with ``d f / d Z = 2 W Z`` for ``f = sum_trailing log(diag(R) + offset)``.

    ``df = tr(L^-T D L^-1 dJ)`` for ``L = R^T``, ``D = diag(L_kk f'(L_kk) / 2)`` on the trailing
    block, and ``dJ = dZ Z^T + Z dZ^T``: so ``W = R^-1 D R^-T``, a small ``k x k`` matrix.
    """
    k = r.shape[-1]
    diagonal = torch.diagonal(r, dim1=-2, dim2=-1).abs()
    trailing = torch.arange(k, device=r.device) >= k // 2
    weight = torch.where(trailing, 0.5 * diagonal / (diagonal + offset), 0.0)
    return (r_inv * weight[..., None, :]) @ r_inv.mT


class _RegionLogDet(torch.autograd.Function):
    """The log-determinant of each map pair's regions, with the closed-form backward.

    The region vectors are built here, straight into one ``[P; Y]`` buffer, and centred in
    place. The centring needs no backward of its own: the gradient ``2 W Z`` with respect to
    the centred ``Z`` has zero (weighted) mean over the windows, because ``Z`` has, so it is
    also the gradient with respect to the raw vectors. The backward forms only the rows of
    ``2 W Z`` whose maps need a gradient (the target's usually do not) and folds them back.
    """

    @staticmethod
    def forward(ctx, p_maps, y_maps, window_weights, radius, step, epsilon, offset, dtype):
        n, c = p_maps.shape[:2]
        p_windows = window_view(p_maps, radius, step)
        z = torch.empty((n, c, 2, *p_windows.shape[2:]), dtype=dtype, device=p_maps.device)
        z[:, :, 0].copy_(p_windows)
        z[:, :, 1].copy_(window_view(y_maps, radius, step))
        z = _centre_(z.view(n, c, 2 * radius * radius, -1), window_weights)
        r, r_inv = _joint_factor(z, epsilon)
        ctx.save_for_backward(z, _gradient_weights(r, r_inv, offset))
        ctx.geometry = (p_maps.shape[-2:], radius, step)
        return _trailing_log_diagonal(r, offset)

    @staticmethod
    @once_differentiable
    def backward(ctx, cotangent: torch.Tensor):
        z, weights = ctx.saved_tensors
        size, radius, step = ctx.geometry
        d = radius * radius
        # The cotangent scales the small k x k matrix, not the 2d x L result.
        scaled = 2.0 * cotangent[..., None, None] * weights
        grads = [
            fold_windows(scaled[..., rows, :] @ z, size, radius, step) if needed else None
            for rows, needed in (
                (slice(0, d), ctx.needs_input_grad[0]),
                (slice(d, 2 * d), ctx.needs_input_grad[1]),
            )
        ]
        return (*grads, None, None, None, None, None, None)


def region_log_det(
    p_maps: torch.Tensor,
    y_maps: torch.Tensor,
    window_weights: torch.Tensor | None,
    *,
    radius: int,
    step: int,
    epsilon: float,
    offset: float,
    dtype: torch.dtype,
) -> torch.Tensor:
    """``sum(log(diag(chol(M + eps I)) + offset))`` for each ``(n, c)`` of two maps, ``[N, C]``.

    ``p_maps``, ``y_maps``: ``[N, C, H, W]`` (downsampled) probability and target maps, whose
    ``radius x radius`` windows at spacing ``step`` are the region vectors, taken in ``dtype``.
    ``window_weights``: ``None``, or ``[N, 1, L]`` 0/1 weights of those windows (0 drops a
    window from the statistics). With ``offset = 0`` this is ``logdet(M + eps I) / 2``; the
    reference's "log trace" route uses ``offset = 1e-8``.
    """
    return _RegionLogDet.apply(p_maps, y_maps, window_weights, radius, step, epsilon, offset, dtype)
