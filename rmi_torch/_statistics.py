"""Region statistics and the log-determinant of the posterior covariance.

With ``Z = [P; Y]`` the centred region vectors of prediction and target (``2d x L``), the joint
matrix ``J = Z Z^T + eps I`` has the posterior covariance plus ``eps I`` (``M + eps I`` in the
SPEC) as the Schur complement of its leading ``d x d`` block, so the trailing ``d`` diagonal
entries of the Cholesky factor of ``J`` are those of the Cholesky factor of ``M + eps I``.

We never form ``J``: it is squared data, and in float32 it rounds away the ``eps``-sized
information that the loss is made of (the Cholesky of ``J`` fails outright on near-perfect
predictions at stride 1). Instead ``R`` comes from a QR factorisation of ``[Z^T; sqrt(eps) I]``,
whose Gram matrix is ``J``; ``|diag(R)|`` is the Cholesky diagonal of ``J``.
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable


def centre(z: torch.Tensor) -> torch.Tensor:
    """Subtract from each region-vector component its mean over the windows (last axis)."""
    return z - z.mean(dim=-1, keepdim=True)


def _joint_factor(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Upper-triangular ``R`` with ``R^T R = z z^T + epsilon I``; ``z`` is ``[..., k, L]``."""
    k = z.shape[-2]
    ridge = math.sqrt(epsilon) * torch.eye(k, dtype=z.dtype, device=z.device)
    stacked = torch.cat([z.mT, ridge.expand(*z.shape[:-2], k, k)], dim=-2)
    return torch.linalg.qr(stacked, mode="r").R


def _trailing_diagonal(r: torch.Tensor) -> torch.Tensor:
    k = r.shape[-1]
    return torch.diagonal(r, dim1=-2, dim2=-1)[..., k // 2 :].abs()


def _log_diag_sum(diagonal: torch.Tensor, offset: float) -> torch.Tensor:
    return torch.log(diagonal + offset).sum(dim=-1)


class _ConditionalLogDet(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: torch.Tensor, epsilon: float, offset: float) -> torch.Tensor:
        r = _joint_factor(z, epsilon)
        ctx.save_for_backward(z, r)
        ctx.offset = offset
        return _log_diag_sum(_trailing_diagonal(r), offset)

    @staticmethod
    @once_differentiable
    def backward(ctx, cotangent: torch.Tensor):
        # f = sum_k w(L_kk), L = chol(J): df = tr(L^-T D L^-1 dJ) with D = diag(L_kk w'(L_kk)/2).
        # L = R^T up to row signs (which cancel) and dJ = dZ Z^T + Z dZ^T give dZ = 2 R^-1 D R^-T Z.
        z, r = ctx.saved_tensors
        k = r.shape[-1]
        diagonal = torch.diagonal(r, dim1=-2, dim2=-1).abs()
        weight = 0.5 * diagonal / (diagonal + ctx.offset)
        weight = torch.where(torch.arange(k, device=r.device) >= k // 2, weight, 0.0)
        weight = weight * cotangent[..., None]
        projected = torch.linalg.solve_triangular(r.mT, z, upper=False)
        grad = torch.linalg.solve_triangular(r, weight[..., None] * projected, upper=True)
        return 2.0 * grad, None, None


def conditional_log_det(z: torch.Tensor, epsilon: float, offset: float) -> torch.Tensor:
    """``sum(log(diag(chol(M + eps I)) + offset))`` for each leading index of ``z``.

    ``z``: centred ``[P; Y]`` region vectors, ``[..., 2d, L]``. With ``offset = 0`` this is
    ``logdet(M + eps I) / 2``; the reference's "log trace" route uses ``offset = 1e-8``.
    """
    return _ConditionalLogDet.apply(z, epsilon, offset)
