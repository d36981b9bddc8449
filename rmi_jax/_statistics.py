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

from functools import partial

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular


def centre(z: jnp.ndarray) -> jnp.ndarray:
    """Subtract from each region-vector component its mean over the windows (last axis)."""
    return z - z.mean(axis=-1, keepdims=True)


def _joint_factor(z: jnp.ndarray, epsilon: float) -> jnp.ndarray:
    """Upper-triangular ``R`` with ``R^T R = z z^T + epsilon I``; ``z`` is ``[..., k, L]``."""
    k = z.shape[-2]
    ridge = jnp.broadcast_to(jnp.sqrt(epsilon) * jnp.eye(k, dtype=z.dtype), (*z.shape[:-2], k, k))
    return jnp.linalg.qr(jnp.concatenate([jnp.swapaxes(z, -1, -2), ridge], axis=-2), mode="r")


def _trailing_diagonal(r: jnp.ndarray) -> jnp.ndarray:
    k = r.shape[-1]
    return jnp.abs(jnp.diagonal(r, axis1=-2, axis2=-1)[..., k // 2 :])


@partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def conditional_log_det(z: jnp.ndarray, epsilon: float, offset: float) -> jnp.ndarray:
    """``sum(log(diag(chol(M + eps I)) + offset))`` for each leading index of ``z``.

    ``z``: centred ``[P; Y]`` region vectors, ``[..., 2d, L]``. With ``offset = 0`` this is
    ``logdet(M + eps I) / 2``; the reference's "log trace" route uses ``offset = 1e-8``.
    """
    return _log_diag_sum(_trailing_diagonal(_joint_factor(z, epsilon)), offset)


def _log_diag_sum(diagonal: jnp.ndarray, offset: float) -> jnp.ndarray:
    return jnp.log(diagonal + offset).sum(axis=-1)


def _conditional_log_det_fwd(z, epsilon, offset):
    r = _joint_factor(z, epsilon)
    return _log_diag_sum(_trailing_diagonal(r), offset), (z, r)


def _conditional_log_det_bwd(epsilon, offset, residuals, cotangent):
    # For f = sum_k w(L_kk) with L = chol(J): df = tr(L^-T D L^-1 dJ), D = diag(L_kk w'(L_kk)/2).
    # L = R^T up to row signs (which cancel) and dJ = dZ Z^T + Z dZ^T give dZ = 2 R^-1 D R^-T Z.
    z, r = residuals
    del epsilon
    k = r.shape[-1]
    diagonal = jnp.abs(jnp.diagonal(r, axis1=-2, axis2=-1))
    weight = 0.5 * diagonal / (diagonal + offset)
    weight = jnp.where(jnp.arange(k) >= k // 2, weight, 0.0) * cotangent[..., None]
    projected = solve_triangular(jnp.swapaxes(r, -1, -2), z, lower=True)
    grad = solve_triangular(r, weight[..., None] * projected, lower=False)
    return (2.0 * grad,)


conditional_log_det.defvjp(_conditional_log_det_fwd, _conditional_log_det_bwd)
