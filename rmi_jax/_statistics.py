"""Region statistics and the log-determinant of the posterior covariance.

With ``Z = [P; Y]`` the centred region vectors of prediction and target (``2d x L``), the joint
matrix ``J = Z Z^T + eps I`` has the posterior covariance plus ``eps I`` (``M + eps I`` in the
SPEC) as the Schur complement of its leading ``d x d`` block, so the trailing ``d`` diagonal
entries of the Cholesky factor of ``J`` are those of the Cholesky factor of ``M + eps I``.

The factor ``R`` (``R^T R = J``) comes from a shifted Cholesky QR in two passes of the data
``A = [Z^T; sqrt(eps) I]``, never from ``J`` alone: ``J`` is squared data, and in float32 it rounds
away the ``eps``-sized information the loss is made of (its Cholesky factor is 2% off at stride 3
and fails outright at stride 1 on near-perfect predictions). Pass one factors ``J + shift I``,
with a shift of a few rounding units of ``trace(J)`` so that it cannot fail; pass two factors the
Gram matrix of the now well-conditioned ``A R1^-1``, recomputed from the data. ``R = R2 R1`` is
as accurate as a Householder QR, at the price of three small matrix products per region matrix.

Everything runs on chunks of a few region matrices at a time (``lax.map``), building the region
vectors inside the chunk from the pooled maps, so the ``2d``-fold copy of the maps is never held
in memory whole; the backward pass rebuilds it the same way.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from rmi_jax._windows import region_vectors

# Pass one's shift, in units of (matrix size) * (unit roundoff) * trace(J): enough to keep the
# float32 Cholesky factorisation away from failure, small enough that pass two sees a matrix
# with condition number below ~1e3 (its factor is then accurate to ~1e3 rounding units).
_SHIFT_ROUNDING_UNITS = 1.0
# Bytes of region vectors one chunk may hold: fits in a core's cache on CPUs of today.
_CHUNK_BYTES = 2 << 20


def _gram(a: jnp.ndarray) -> jnp.ndarray:
    """``a a^T`` for ``a`` of shape ``[..., k, L]``."""
    return jnp.einsum("...il,...jl->...ij", a, a)


def _upper_cholesky(gram: jnp.ndarray) -> jnp.ndarray:
    return jnp.swapaxes(jnp.linalg.cholesky(gram), -1, -2)


def _triangular_inverse(r: jnp.ndarray) -> jnp.ndarray:
    eye = jnp.broadcast_to(jnp.eye(r.shape[-1], dtype=r.dtype), r.shape)
    return solve_triangular(r, eye, lower=False)


def _joint_factor(z: jnp.ndarray, epsilon: float) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Upper-triangular R with R^T R = z z^T + epsilon I, and R^-1; z is ``[.., k, L]``."""
    k = z.shape[-2]
    eye = jnp.eye(k, dtype=z.dtype)
    gram = _gram(z)
    trace = jnp.trace(gram, axis1=-2, axis2=-1)[..., None, None]
    shift = _SHIFT_ROUNDING_UNITS * k * jnp.finfo(z.dtype).eps * trace
    r1 = _upper_cholesky(gram + (epsilon + shift) * eye)
    r1_inv = _triangular_inverse(r1)
    # Rows of A R1^-1, transposed: the data part R1^-T Z and the ridge part sqrt(eps) R1^-T.
    r1_inv_t = jnp.swapaxes(r1_inv, -1, -2)
    r2 = _upper_cholesky(_gram(r1_inv_t @ z) + epsilon * _gram(r1_inv_t))
    return r2 @ r1, r1_inv @ _triangular_inverse(r2)


def _trailing_log_diagonal(r: jnp.ndarray, offset: float) -> jnp.ndarray:
    k = r.shape[-1]
    diagonal = jnp.abs(jnp.diagonal(r, axis1=-2, axis2=-1)[..., k // 2 :])
    return jnp.log(diagonal + offset).sum(axis=-1)


def _gradient_weights(r: jnp.ndarray, r_inv: jnp.ndarray, offset: float) -> jnp.ndarray:
    """``W`` with ``d f / d Z = 2 W Z`` for ``f = sum_trailing log(diag(R) + offset)``.

    ``df = tr(L^-T D L^-1 dJ)`` for ``L = R^T``, ``D = diag(L_kk f'(L_kk) / 2)`` on the trailing
    block, and ``dJ = dZ Z^T + Z dZ^T``: so ``W = R^-1 D R^-T``, a small ``k x k`` matrix.
    """
    k = r.shape[-1]
    diagonal = jnp.abs(jnp.diagonal(r, axis1=-2, axis2=-1))
    weight = jnp.where(jnp.arange(k) >= k // 2, 0.5 * diagonal / (diagonal + offset), 0.0)
    return (r_inv * weight[..., None, :]) @ jnp.swapaxes(r_inv, -1, -2)


def _joint_vectors(p_maps, y_maps, window_weights, radius: int, step: int):
    """Centred ``[P; Y]`` region vectors ``[..., 2d, L]`` of two ``[..., H, W]`` maps.

    With ``window_weights`` (``[..., L]``, 0 or 1), windows of weight 0 leave the centring and
    become zero columns, so they leave every covariance too; ``None`` keeps every window.
    """
    z = jnp.concatenate(
        [region_vectors(p_maps, radius, step), region_vectors(y_maps, radius, step)], axis=-2
    )
    if window_weights is None:
        return z - z.mean(axis=-1, keepdims=True)
    weights = window_weights[..., None, :]
    mean = (z * weights).sum(axis=-1, keepdims=True) / weights.sum(axis=-1, keepdims=True)
    return (z - mean) * weights


def _chunk_size(num_maps: int, num_windows: int, radius: int, itemsize: int) -> int:
    per_map = 2 * radius * radius * num_windows * itemsize
    return max(1, min(num_maps, _CHUNK_BYTES // per_map))


def _forward_chunk(maps, radius, step, epsilon, offset):
    z = _joint_vectors(*maps, radius, step)
    r, r_inv = _joint_factor(z, epsilon)
    return _trailing_log_diagonal(r, offset), _gradient_weights(r, r_inv, offset)


def _map_chunks(function, arrays, radius: int, step: int, maps: jnp.ndarray):
    """``lax.map`` of ``function`` over the flattened leading axes of ``arrays`` (a pytree whose
    leaves share ``maps``' leading axes), a cache-sized chunk of ``maps`` at a time."""
    lead = maps.shape[:-2]
    flat = jax.tree.map(lambda x: x.reshape(-1, *x.shape[len(lead) :]), arrays)
    height, width = maps.shape[-2:]
    windows = ((height - radius) // step + 1) * ((width - radius) // step + 1)
    chunk = _chunk_size(math.prod(lead), windows, radius, maps.dtype.itemsize)
    outputs = jax.lax.map(function, flat, batch_size=chunk)
    return jax.tree.map(lambda x: x.reshape(*lead, *x.shape[1:]), outputs)


@partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def region_log_det(
    p_maps: jnp.ndarray,
    y_maps: jnp.ndarray,
    window_weights: jnp.ndarray | None,
    radius: int,
    step: int,
    epsilon: float,
    offset: float,
) -> jnp.ndarray:
    """``sum(log(diag(chol(M + eps I)) + offset))`` for each leading index of two maps.

    ``p_maps``, ``y_maps``: ``[..., H, W]`` (downsampled) probability and target maps, whose
    ``radius x radius`` windows at spacing ``step`` are the region vectors. ``window_weights``:
    ``None``, or ``[..., L]`` 0/1 weights of those windows (0 drops a window from the statistics;
    not differentiated). With ``offset = 0`` this is ``logdet(M + eps I) / 2``; the reference's
    "log trace" route uses ``offset = 1e-8``.
    """
    return _region_log_det_fwd(p_maps, y_maps, window_weights, radius, step, epsilon, offset)[0]


def _region_log_det_fwd(p_maps, y_maps, window_weights, radius, step, epsilon, offset):
    function = partial(_forward_chunk, radius=radius, step=step, epsilon=epsilon, offset=offset)
    maps = (p_maps, y_maps, window_weights)
    value, weights = _map_chunks(function, maps, radius, step, p_maps)
    return value, (maps, weights)


def _region_log_det_bwd(radius, step, epsilon, offset, residuals, cotangent):
    del epsilon, offset
    maps, weights = residuals
    d = radius * radius

    def chunk(args):
        (p, y, window_weights), w, g = args
        z = _joint_vectors(p, y, window_weights, radius, step)
        # The cotangent scales the small k x k matrix, not the 2d x L product.
        scaled = (2.0 * g[..., None, None]) * w
        # 2 W Z has zero (weighted) mean over the windows, as Z has: it is also the gradient
        # with respect to the raw region vectors, so the centring needs no backward. The rows of
        # each map are formed apart, so an unused target gradient is dropped under jit.
        return tuple(
            _region_vectors_transpose(scaled[..., rows, :] @ z, m, radius, step)
            for rows, m in ((slice(0, d), p), (slice(d, 2 * d), y))
        )

    d_p, d_y = _map_chunks(chunk, (maps, weights, cotangent), radius, step, maps[0])
    window_weights = maps[2]
    return d_p, d_y, None if window_weights is None else jnp.zeros_like(window_weights)


def _region_vectors_transpose(vectors, maps, radius: int, step: int) -> jnp.ndarray:
    """Region-vector values ``[..., d, L]`` summed back onto maps shaped like ``maps``."""
    _, pullback = jax.vjp(partial(region_vectors, radius=radius, step=step), maps)
    return pullback(vectors)[0]


region_log_det.defvjp(_region_log_det_fwd, _region_log_det_bwd)
