"""Region statistics and the log-determinant of the posterior covariance.

With ``Z = [P; Y]`` the centred region vectors of prediction and target (``2d x L``), the joint
matrix ``J = Z Z^T + eps I`` has the posterior covariance plus ``eps I`` (``M + eps I``, see
``docs/semantics.md``) as the Schur complement of its leading ``d x d`` block, so the trailing
``d`` diagonal entries of the Cholesky factor of ``J`` are those of the Cholesky factor of
``M + eps I``.

The factor ``R`` (``R^T R = J``) comes from a shifted Cholesky QR in two passes of the data
``A = [Z^T; sqrt(eps) I]``, never from ``J`` alone: ``J`` is squared data, and in float32 it rounds
away the ``eps``-sized information the loss is made of (its Cholesky factor is 2% off at stride 3
and fails outright at stride 1 on near-perfect predictions). Pass one factors ``J + shift I``,
with a shift of a few rounding units of ``trace(J)`` (``rmi_core.options.shift_units``) so that
it cannot fail; pass two factors the Gram matrix of the now well-conditioned ``A R1^-1``,
recomputed from the data. ``R = R2 R1`` is as accurate as a Householder QR, at the price of
three small matrix products per region matrix. Every product runs at full precision
(``Precision.HIGHEST``) whatever the platform's or the caller's default: one bfloat16 pass (TPU)
or TF32 (recent NVIDIA GPUs) would round away the same ``eps``-sized signal.

On the CPU the statistics run a cache-sized chunk of region matrices at a time (``lax.map``),
building the region vectors inside the chunk, so the ``2d``-fold copy of the maps is never held
in memory whole; on GPU and TPU they take all maps in one batch (up to a memory budget). The
choice is made when the function is lowered for its platform (``lax.platform_dependent``). The
backward pass rebuilds the vectors the same way.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from rmi_core import options
from rmi_core.options import maps_per_chunk, shift_units, window_grid
from rmi_jax._windows import region_vectors

_FULL_PRECISION = jax.lax.Precision.HIGHEST


def _matmul(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    return jnp.matmul(a, b, precision=_FULL_PRECISION)


def _gram(a: jnp.ndarray) -> jnp.ndarray:
    """``a a^T`` for ``a`` of shape ``[..., k, L]``."""
    return jnp.einsum("...il,...jl->...ij", a, a, precision=_FULL_PRECISION)


def _upper_cholesky(gram: jnp.ndarray) -> jnp.ndarray:
    return jnp.swapaxes(jnp.linalg.cholesky(gram), -1, -2)


def _triangular_inverse(r: jnp.ndarray) -> jnp.ndarray:
    eye = jnp.broadcast_to(jnp.eye(r.shape[-1], dtype=r.dtype), r.shape)
    return solve_triangular(r, eye, lower=False)


def _joint_factor(z: jnp.ndarray, epsilon: float) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Upper-triangular R with R^T R = z z^T + epsilon I, and R^-1; z is ``[.., k, L]``."""
    k, windows = z.shape[-2:]
    eye = jnp.eye(k, dtype=z.dtype)
    gram = _gram(z)
    trace = jnp.trace(gram, axis1=-2, axis2=-1)[..., None, None]
    shift = shift_units(k, windows) * jnp.finfo(z.dtype).eps * trace
    r1 = _upper_cholesky(gram + (epsilon + shift) * eye)
    r1_inv = _triangular_inverse(r1)
    # Rows of A R1^-1, transposed: the data part R1^-T Z and the ridge part sqrt(eps) R1^-T.
    r1_inv_t = jnp.swapaxes(r1_inv, -1, -2)
    r2 = _upper_cholesky(_gram(_matmul(r1_inv_t, z)) + epsilon * _gram(r1_inv_t))
    return _matmul(r2, r1), _matmul(r1_inv, _triangular_inverse(r2))


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
    return _matmul(r_inv * weight[..., None, :], jnp.swapaxes(r_inv, -1, -2))


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


def _forward_chunk(maps, radius, step, epsilon, offset):
    z = _joint_vectors(*maps, radius, step)
    r, r_inv = _joint_factor(z, epsilon)
    return _trailing_log_diagonal(r, offset), _gradient_weights(r, r_inv, offset)


def _map_chunks(function, arrays, radius: int, step: int, maps: jnp.ndarray):
    """``function`` of one region matrix's arrays, mapped over the flattened leading axes of
    ``arrays`` (a pytree whose leaves share ``maps``' leading axes), as the platform runs best:
    cache-sized chunks on CPU, one batch (or chunks of the accelerator budget) elsewhere."""
    lead = maps.shape[:-2]
    flat = jax.tree.map(lambda x: x.reshape(-1, *x.shape[len(lead) :]), arrays)
    num_maps = math.prod(lead)
    windows = math.prod(window_grid(*maps.shape[-2:], radius, step))

    def within(budget_key: str):
        def run(flat_arrays):
            if not isinstance(num_maps * windows, int):
                # A symbolic (shape-polymorphic) size: the number of chunks would be symbolic
                # too, so everything goes in one batch.
                return jax.vmap(function)(flat_arrays)
            budget = options.CHUNK_BYTES[budget_key]
            size = maps_per_chunk(num_maps, windows, radius, maps.dtype.itemsize, budget)
            if size == num_maps:
                return jax.vmap(function)(flat_arrays)
            return jax.lax.map(function, flat_arrays, batch_size=size)

        return run

    outputs = jax.lax.platform_dependent(flat, cpu=within("cpu"), default=within("accelerator"))
    return jax.tree.map(lambda x: x.reshape(*lead, *x.shape[1:]), outputs)


@partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def region_log_det(p_maps, y_maps, window_weights, radius, step, epsilon, offset):
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
            _region_vectors_transpose(_matmul(scaled[..., rows, :], z), m, radius, step)
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


def lower_bound(
    p_maps: jnp.ndarray,
    y_maps: jnp.ndarray,
    window_weights: jnp.ndarray | None,
    *,
    radius: int,
    step: int,
    epsilon: float,
    offset: float,
    dtype,
) -> jnp.ndarray:
    """``0.5 logdet(M + eps I) / d`` per example and class of downsampled ``[N, C, H, W]`` maps,
    ``[N, C]``, with the statistics in ``dtype``.

    ``window_weights``: ``None`` or ``[N, L]`` 0/1 weights of the windows, shared by the classes.
    """
    if window_weights is not None:
        window_weights = jnp.broadcast_to(
            window_weights[:, None], (*p_maps.shape[:2], window_weights.shape[-1])
        )

    def log_det_in(statistics_dtype, *maps):
        p, y, weights = (None if m is None else m.astype(statistics_dtype) for m in maps)
        # 0.5 * logdet = sum(log(diag(chol))), so the 0.5 and the 2 of the reference cancel.
        return region_log_det(p, y, weights, radius, step, epsilon, offset).astype(dtype)

    maps = (p_maps, y_maps, window_weights)
    if jnp.dtype(dtype) == jnp.float64:
        # TPUs have no float64 arithmetic: there the statistics fall back to the float32 route,
        # which is accurate too (see docs/accuracy.md), and the result is returned in float64.
        log_det = jax.lax.platform_dependent(
            *maps,
            tpu=partial(log_det_in, jnp.float32),
            default=partial(log_det_in, jnp.float64),
        )
    else:
        log_det = log_det_in(dtype, *maps)
    return log_det / (radius * radius)
