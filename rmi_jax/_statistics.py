"""Region statistics and the log-determinant of the posterior covariance.

With ``Z = [P; Y]`` the centred region vectors of prediction and target (``2d x L``), the joint
matrix ``J = Z Z^T + eps I`` has the posterior covariance plus ``eps I`` (``M + eps I``, see
``docs/semantics.md``) as the Schur complement of its leading ``d x d`` block, so the trailing
``d`` diagonal entries of the Cholesky factor of ``J`` are those of the Cholesky factor of
``M + eps I``.

Where the platform has float64 (CPU, GPU), ``Z Z^T`` is summed in float64 from the maps, never
formed from region vectors in float32 (docs/computation.md#lag-products):

- windows at spacing 1 without weights (the default: max or average pooling, no mask), on maps
  of at least ``numerics.LAG_PRODUCTS_MIN_WINDOWS`` windows (smaller ones take region vectors,
  which compile and run faster there): each
  entry is a sum of a *lag product* ``x(u) x'(u + delta)`` over a shifted grid, and the shifted
  grids share their bulk, so each lag product is summed once over the bulk and once over the
  thin edges (``rmi_core.lags``), in one pass over the maps that XLA fuses into one reduction
  with an accumulator per lag; the gradient is the maps correlated with small kernels built
  from the closed-form weights, constant over the bulk;
- strided windows (region extraction) or window weights (masks), where offsets share no work:
  the weighted, centred region vectors in float64 and one product.

The ``2d x 2d`` algebra (Cholesky factor, log-determinant, gradient weights) runs in float64
too. JAX's x64 mode is switched on for these steps alone (``jax.enable_x64``), so a float32
program gets float64 statistics without the global flag. A TPU has no float64: there the
statistics are the two-pass shifted Cholesky QR in float32 of the data
``A = [Z^T; sqrt(eps) I]`` (docs/semantics.md#two-pass-shifted-cholesky-qr), chosen when the
function is lowered (``lax.platform_dependent``). Every matrix product runs at full precision
(``Precision.HIGHEST``) whatever the caller's default.

The region-vector routes (strided windows, and the TPU's) run a cache-sized chunk of maps at a
time on the CPU (``lax.map``), so the ``2d``-fold copy of the maps is never held whole; the lag
products need no copy and no chunks.
"""

from __future__ import annotations

import itertools
import math
from functools import lru_cache, partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular

from rmi_core import lags, numerics
from rmi_core.geometry import Sizes, region_size, window_grid
from rmi_core.numerics import maps_per_chunk, shift_units
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


def _joint_vectors(p_maps, y_maps, window_weights, radius: Sizes, step: Sizes):
    """Centred ``[P; Y]`` region vectors ``[..., 2d, L]`` of two maps ``[..., *spatial]``.

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


def _map_chunks(function, arrays, radius: Sizes, step: Sizes, maps: jnp.ndarray):
    """``function`` of one region matrix's arrays, mapped over the flattened leading axes of
    ``arrays`` (a pytree whose leaves share ``maps``' leading axes), as the platform runs best:
    cache-sized chunks on CPU, one batch (or chunks of the accelerator budget) elsewhere."""
    lead = maps.shape[: -len(radius)]
    flat = jax.tree.map(lambda x: x.reshape(-1, *x.shape[len(lead) :]), arrays)
    num_maps = math.prod(lead)
    windows = math.prod(window_grid(maps.shape[-len(radius) :], radius, step))

    def within(budget_key: str):
        def run(flat_arrays):
            if not isinstance(num_maps * windows, int):
                # A symbolic (shape-polymorphic) size: the number of chunks would be symbolic
                # too, so everything goes in one batch.
                return jax.vmap(function)(flat_arrays)
            budget = numerics.CHUNK_BYTES[budget_key]
            d = region_size(radius)
            size = maps_per_chunk(num_maps, windows, d, maps.dtype.itemsize, budget)
            if size == num_maps:
                return jax.vmap(function)(flat_arrays)
            return jax.lax.map(function, flat_arrays, batch_size=size)

        return run

    outputs = jax.lax.platform_dependent(flat, cpu=within("cpu"), default=within("accelerator"))
    return jax.tree.map(lambda x: x.reshape(*lead, *x.shape[1:]), outputs)


def _region_vectors_transpose(vectors, maps, radius: Sizes, step: Sizes) -> jnp.ndarray:
    """Region-vector values ``[..., d, L]`` summed back onto maps shaped like ``maps``."""
    _, pullback = jax.vjp(partial(region_vectors, radius=radius, step=step), maps)
    return pullback(vectors)[0]


def _map_gradients(vectors_of, p, y, scaled_weights, radius: Sizes, step: Sizes):
    """The gradients of both maps from ``2 g W`` (``scaled_weights``, ``[..., 2d, 2d]``) and the
    centred region vectors ``z = vectors_of(p, y)``: ``2 g W Z`` folded back onto each map.

    ``2 W Z`` has zero (weighted) mean over the windows, as ``Z`` has: it is also the gradient
    with respect to the raw region vectors, so the centring needs no backward. The rows of each
    map are formed apart, so an unused target gradient is dropped under jit.
    """
    d = region_size(radius)
    z = vectors_of(p, y)
    return tuple(
        _region_vectors_transpose(_matmul(scaled_weights[..., rows, :], z), m, radius, step)
        for rows, m in ((slice(0, d), p), (slice(d, 2 * d), y))
    )


# --- float64 statistics (CPU, GPU) ----------------------------------------------------------


def _log_det_and_weights(gram: jnp.ndarray, epsilon: float, offset: float):
    """The value ``sum_trailing log(diag(R) + offset)`` and the gradient weights ``W`` of the
    centred joint Gram matrix ``gram`` (``[..., 2d, 2d]``, float64), ``R^T R = gram + eps I``.

    The Gram matrix is exact to float64 rounding of the data's sums, so one factorisation
    serves: its smallest eigenvalues (``eps``) sit far above float64's ``u * trace``.
    """
    r = _upper_cholesky(gram + epsilon * jnp.eye(gram.shape[-1], dtype=gram.dtype))
    r_inv = _triangular_inverse(r)
    return _trailing_log_diagonal(r, offset), _gradient_weights(r, r_inv, offset)


def _padded(maps: jnp.ndarray, plan: lags.Plan) -> jnp.ndarray:
    pads = [(0, 0)] * (maps.ndim - len(plan.padding)) + [(p, p) for p in plan.padding]
    return jnp.pad(maps, pads)


def _block_region(block) -> tuple:
    """The index of a block of ``plan.blocks`` in a map."""
    return (Ellipsis, *(slice(g.start, g.stop) for g in block))


def _shifted(maps: jnp.ndarray, padded: jnp.ndarray, block, shift, plan: lags.Plan):
    """``maps`` at ``u + shift`` for the pixels ``u`` of ``block``, in float64: read from the
    map itself where the shifted block lies inside it (always for the bulk), else from its
    zero-padded copy."""
    starts = [g.start + s for g, s in zip(block, shift, strict=True)]
    stops = [g.stop + s for g, s in zip(block, shift, strict=True)]
    if all(0 <= lo and hi <= n for lo, hi, n in zip(starts, stops, plan.shape, strict=True)):
        region = (Ellipsis, *(slice(lo, hi) for lo, hi in zip(starts, stops, strict=True)))
        return maps[region].astype(jnp.float64)
    pads = plan.padding
    region = (
        Ellipsis,
        *(slice(lo + p, hi + p) for lo, hi, p in zip(starts, stops, pads, strict=True)),
    )
    return padded[region].astype(jnp.float64)


def _contract_offsets(values: jnp.ndarray, block, kept_first: bool) -> jnp.ndarray:
    """Between a block's pixels and the region offsets, through the indicator
    ``[0 <= u - a < g]`` of each axis (all ones over a reduced axis).

    ``kept_first=True``: ``values`` ``[B, n, (kept pixel axes)]`` -> ``[B, n, R...]`` (the
    forward: each offset's sum from the block's), with size-1 axes where the block was reduced
    (every offset gets the same). ``False``: ``[B, n, R...]`` -> ``[B, n, (block axes)]`` (the
    backward: each pixel's coefficient), size 1 along reduced axes.
    """
    letters = "cdefghijkmopqrstuvwxyz"
    axes = len(block)
    offset_letters, pixel_letters = letters[:axes], letters[axes : 2 * axes].upper()
    kept = [i for i, group in enumerate(block) if not group.reduced]
    operands = [jnp.asarray(block[i].indicator, values.dtype) for i in kept]
    subscripts = [pixel_letters[i] + offset_letters[i] for i in kept]
    kept_pixels = "".join(pixel_letters[i] for i in kept)
    kept_offsets = "".join(offset_letters[i] for i in kept)
    source, target = (kept_pixels, kept_offsets) if kept_first else (offset_letters, kept_pixels)
    spec = ",".join([f"bn{source}", *subscripts]) + f"->bn{target}"
    out = jnp.einsum(spec, values, *operands, precision=_FULL_PRECISION)
    for i, group in enumerate(block):  # the reduced axes, as broadcastable size-1 axes
        if group.reduced:
            out = jnp.expand_dims(out, 2 + i)
    return out


def _sums(values: list[jnp.ndarray], axes: tuple[int, ...]) -> jnp.ndarray:
    """Each of ``values`` summed over ``axes``, stacked on axis 1: reductions with one
    accumulator per value, so XLA reads each pixel once for all of them.

    One axis at a time, the last first: XLA's CPU reduction adds its terms in sequence, so
    summing ``n`` terms at once would carry a rounding error up to ``n u`` of the sum, and the
    loss's ``eps``-sized signal is the difference of such sums (measured: 4.8e-6 off the
    reference on a near-perfect 256x256 map at stride 1). Row by row it is the sum of the axes'
    lengths instead (4.5e-8 on the same map)."""
    zeros = tuple(np.zeros((), jnp.float64) for _ in values)
    for axis in sorted(axes, reverse=True):
        values = jax.lax.reduce(
            tuple(values),
            zeros,
            lambda a, b: tuple(x + y for x, y in zip(a, b, strict=True)),
            (axis,),
        )
    return jnp.stack(values, axis=1)


def _lag_window_sums(maps: tuple[jnp.ndarray, jnp.ndarray], radius: tuple) -> jnp.ndarray:
    """``T[b, lag, a]``: each lag product of ``lags.plan`` summed over the grid shifted by each
    offset, ``[B, len(plan.lags), d]``, from the maps ``[B, *S]``, in float64 (products of
    float32 values are exact there). One reduction per block for all lags, with an accumulator
    per lag, so XLA reads each pixel once for all of them."""
    return _lag_window_sums_fwd(maps, radius)[0]


def _lag_window_sums_fwd(maps, radius):
    plan = lags.plan(maps[0].shape[1:], radius)
    padded = tuple(_padded(m, plan) for m in maps)
    batch = maps[0].shape[0]
    totals = jnp.zeros((batch, len(plan.lags), *plan.radius), jnp.float64)
    for block in plan.blocks:
        firsts = [m[_block_region(block)].astype(jnp.float64) for m in maps]
        products = [
            firsts[lag.first]
            if lag.second is None
            else firsts[lag.first]
            * _shifted(maps[lag.second], padded[lag.second], block, lag.shift, plan)
            for lag in plan.lags
        ]
        reduced = tuple(1 + i for i, g in enumerate(block) if g.reduced)
        totals = totals + _contract_offsets(_sums(products, reduced), block, kept_first=True)
    return totals.reshape(batch, len(plan.lags), -1), maps


def _lag_window_sums_bwd(radius, maps, cotangent):
    plan = lags.plan(maps[0].shape[1:], radius)
    return (_lag_correlation(plan, maps, cotangent, maps[0].dtype),)


# Second order (with x64 on) differentiates the forward: through this rule, since JAX cannot
# transpose a reduction with several accumulators.
_lag_window_sums = jax.custom_vjp(_lag_window_sums, nondiff_argnums=(1,))
_lag_window_sums.defvjp(_lag_window_sums_fwd, _lag_window_sums_bwd)


def _lag_gram(plan: lags.Plan, maps) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The centred joint Gram ``[B, 2d, 2d]`` and the means ``[B, 2d]`` of the region vectors
    of the maps, in float64."""
    sums = _lag_window_sums(maps, plan.radius).reshape(maps[0].shape[0], -1)
    count = math.prod(plan.grid)
    gram, window_sums = sums[:, plan.gram_source], sums[:, plan.sum_source]
    means = window_sums / count
    return gram - count * means[:, :, None] * means[:, None, :], means


def _gathered_sums(values: jnp.ndarray, source: np.ndarray) -> jnp.ndarray:
    """``sum_j values[:, source[..., j]]`` with a zero appended to ``values`` (``[B, n]``) for
    the index ``n``: the static many-to-few sums of the backward."""
    values = jnp.concatenate([values, jnp.zeros((values.shape[0], 1), values.dtype)], axis=1)
    return values[:, source].sum(axis=-1)


def _window_sum_cotangent(plan: lags.Plan, weights, means, cotangent) -> jnp.ndarray:
    """The cotangent of ``T`` (``[B, len(lags), d]``) for ``g f`` with ``df = tr(W dC)`` and
    ``C = Gram - n mean mean^T``: ``g W`` on the Gram entries, ``-2 g W mean`` on the sums."""
    batch = weights.shape[0]
    sums = -2.0 * jnp.einsum("bkj,bj->bk", weights, means, precision=_FULL_PRECISION)
    entries = jnp.concatenate([weights.reshape(batch, -1), sums], axis=1)
    entries = cotangent.astype(jnp.float64)[:, None] * entries
    return _gathered_sums(entries, plan.cotangent_source).reshape(batch, len(plan.lags), -1)


def _lag_correlation(plan: lags.Plan, maps, cotangent, dtype) -> tuple[jnp.ndarray, ...]:
    """The gradients of both maps (``[B, *S]`` each, in ``dtype``, summed in float64) from the
    cotangent ``[B, len(lags), d]`` of the window sums: each pixel ``u`` of map ``m`` gets, for
    each of ``plan.gradient_terms[m]``, the other factor at ``u + shift`` times the summed
    cotangents of the offsets ``a`` that see it (``u - a`` on the grid).

    Which offsets see a pixel is ``prod_i [u_i - a_i on the grid]``. Written as
    ``prod_i (1 - E_i)``, ``E_i`` the offsets that miss it along axis ``i`` (non-zero on the
    edges only), it expands into a constant and one vector along each axis, summed in one pass
    over every pixel, and products over two or more axes, which live where those axes' edges
    cross (corners) and are added there.
    """
    batch = cotangent.shape[0]
    flat = cotangent.reshape(batch, -1)
    padded = tuple(_padded(x, plan) for x in maps)
    axes = range(len(plan.shape))
    misses = [1.0 - lags.axis_indicator(n, r) for n, r in zip(plan.shape, plan.radius, strict=True)]
    everywhere = [slice(0, n) for n in plan.shape]

    def gradient(m: int) -> jnp.ndarray:
        terms = plan.gradient_terms[m]
        coefficients = _gathered_sums(flat, plan.coefficient_source[m].reshape(-1, 2))
        coefficients = coefficients.reshape(batch, len(terms), *plan.radius)

        def expansion_term(subset, rows) -> jnp.ndarray:
            """The term of the axes ``subset`` on the pixels ``rows`` (a slice per axis):
            ``[B, terms, ...]``, size 1 along the other axes."""
            block = tuple(
                lags.Group(r.start, r.stop, i not in subset, misses[i][r])
                for i, r in enumerate(rows)
            )
            return (-1.0) ** len(subset) * _contract_offsets(coefficients, block, False)

        def lag_terms(fields, rows) -> jnp.ndarray:
            """``sum_t field_t(u) x_t(u + shift_t)`` on ``rows``, each term's field the sum of
            ``fields`` (broadcastable pieces, never added up to full size)."""
            block = tuple(lags.Group(r.start, r.stop, True, None) for r in rows)
            total = 0.0
            for t, lag in enumerate(terms):
                field = sum(f[:, t] for f in fields)
                if lag.second is not None:
                    x = maps[lag.second]
                    field = field * _shifted(x, padded[lag.second], block, lag.shift, plan)
                total = total + field
            return total

        # The constant goes into the first axis' vector: one field fewer to add per term.
        fields = [expansion_term((i,), everywhere) for i in axes]
        fields[0] = fields[0] + expansion_term((), everywhere)
        # Rounded to the output dtype before the corners are added in place: converting after
        # them would make XLA rewrite the whole map for each corner.
        result = lag_terms(fields, everywhere).astype(dtype)
        for size in range(2, len(plan.shape) + 1):
            for subset in itertools.combinations(axes, size):
                edges = [[g for g in plan.groups[i] if not g.reduced] for i in subset]
                for chosen in itertools.product(*edges):
                    rows = list(everywhere)
                    for i, group in zip(subset, chosen, strict=True):
                        rows[i] = slice(group.start, group.stop)
                    correction = lag_terms([expansion_term(subset, rows)], rows)
                    result = result.at[(Ellipsis, *rows)].add(correction.astype(dtype))
        return result

    return tuple(gradient(m) for m in (lags.PREDICTION, lags.TARGET))


def _in_float64(impl):
    """``impl`` of arrays with the maps' axis first, run in float64 without JAX's global x64
    flag, and batched by its own rule: a ``vmap`` merges its axis into the maps' axis and calls
    it again.

    x64 mode is a trace-time setting: the function's float64 operations exist only while it is
    traced inside ``jax.enable_x64``, so no JAX rule may re-create them later outside
    (``vmap``'s batching rules would, in float32). Everything it takes and returns is in the
    inputs' dtype: float64 values leave as float32 pairs (:func:`_narrow`). With the global flag
    on, float64 is native and ``impl`` runs as it is, on JAX's own rules (second order
    included).
    """

    @jax.custom_batching.custom_vmap
    def run(*args):
        with jax.enable_x64(True):
            return impl(*args)

    @run.def_vmap
    def merge_batch(axis_size, in_batched, *args):
        def merged(x, batched):
            x = x if batched else jnp.broadcast_to(x, (axis_size, *x.shape))
            return x.reshape(axis_size * x.shape[1], *x.shape[2:])

        outputs = run(*jax.tree.map(merged, list(args), list(in_batched)))
        outputs = jax.tree.map(lambda x: x.reshape(axis_size, -1, *x.shape[1:]), outputs)
        return outputs, jax.tree.map(lambda _: True, outputs)

    def call(*args):
        # Decided at each trace: the mode can change between traces (``jax.enable_x64``).
        return impl(*args) if _x64_enabled() else run(*args)

    return call


def _x64_enabled() -> bool:
    return jax.dtypes.canonicalize_dtype(jnp.float64) == jnp.float64


def _narrow(x: jnp.ndarray, dtype) -> tuple[jnp.ndarray, ...]:
    """A float64 array as parts in ``dtype`` that sum to it: itself for float64, a float32 pair
    (``hi + lo``, 48 bits) otherwise."""
    if jnp.dtype(dtype) == jnp.float64:
        return (x,)
    hi = x.astype(dtype)
    return hi, (x - hi.astype(jnp.float64)).astype(dtype)


def _widen(parts: tuple[jnp.ndarray, ...]) -> jnp.ndarray:
    return sum(part.astype(jnp.float64) for part in parts)


@lru_cache
def _lag_steps(radius: Sizes, epsilon: float, offset: float):
    """The forward and backward of :func:`_lag_log_det` for these options, in float64."""

    def plan_of(maps):
        return lags.plan(maps.shape[1:], radius)

    def forward(p_maps, y_maps):
        gram, means = _lag_gram(plan_of(p_maps), (p_maps, y_maps))
        value, weights = _log_det_and_weights(gram, epsilon, offset)
        dtype = p_maps.dtype
        return value.astype(dtype), _narrow(weights, dtype), _narrow(means, dtype)

    def backward(p_maps, y_maps, weights, means, cotangent):
        plan = plan_of(p_maps)
        sums = _window_sum_cotangent(plan, _widen(weights), _widen(means), cotangent)
        return _lag_correlation(plan, (p_maps, y_maps), sums, p_maps.dtype)

    return _in_float64(forward), _in_float64(backward)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _lag_log_det(p_maps, y_maps, radius, epsilon, offset):
    return _lag_steps(radius, epsilon, offset)[0](p_maps, y_maps)[0]


def _lag_log_det_fwd(p_maps, y_maps, radius, epsilon, offset):
    value, weights, means = _lag_steps(radius, epsilon, offset)[0](p_maps, y_maps)
    return value, (p_maps, y_maps, weights, means)


def _lag_log_det_bwd(radius, epsilon, offset, residuals, cotangent):
    # A barrier: the gradient is a sum of ~50 lag terms per pixel, which XLA would otherwise
    # fuse into a consumer that reads each pixel several times (the pooling's backward).
    return jax.lax.optimization_barrier(
        _lag_steps(radius, epsilon, offset)[1](*residuals, cotangent)
    )


_lag_log_det.defvjp(_lag_log_det_fwd, _lag_log_det_bwd)


def _float64_vectors(p, y, window_weights, radius: Sizes, step: Sizes):
    cast = (None if x is None else x.astype(jnp.float64) for x in (p, y, window_weights))
    return _joint_vectors(*cast, radius, step)


@lru_cache
def _window_steps(radius: Sizes, step: Sizes, epsilon: float, offset: float):
    """The forward and backward of :func:`_window_log_det` for these options, in float64."""

    def forward(p_maps, y_maps, window_weights):
        def chunk(maps):
            return _log_det_and_weights(
                _gram(_float64_vectors(*maps, radius, step)), epsilon, offset
            )

        maps = (p_maps, y_maps, window_weights)
        value, weights = _map_chunks(chunk, maps, radius, step, p_maps)
        return value.astype(p_maps.dtype), _narrow(weights, p_maps.dtype)

    def backward(p_maps, y_maps, window_weights, weights, cotangent):
        def chunk(args):
            (p, y, window_weights), w, g = args
            scaled = (2.0 * g.astype(jnp.float64)[..., None, None]) * w
            vectors_of = partial(
                _float64_vectors, window_weights=window_weights, radius=radius, step=step
            )
            wide = (p.astype(jnp.float64), y.astype(jnp.float64))
            grads = _map_gradients(vectors_of, *wide, scaled, radius, step)
            return tuple(grad.astype(p.dtype) for grad in grads)

        args = ((p_maps, y_maps, window_weights), _widen(weights), cotangent)
        return _map_chunks(chunk, args, radius, step, p_maps)

    return _in_float64(forward), _in_float64(backward)


@partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _window_log_det(p_maps, y_maps, window_weights, radius, step, epsilon, offset):
    return _window_steps(radius, step, epsilon, offset)[0](p_maps, y_maps, window_weights)[0]


def _window_log_det_fwd(p_maps, y_maps, window_weights, radius, step, epsilon, offset):
    maps = (p_maps, y_maps, window_weights)
    value, weights = _window_steps(radius, step, epsilon, offset)[0](*maps)
    return value, (maps, weights)


def _window_log_det_bwd(radius, step, epsilon, offset, residuals, cotangent):
    maps, weights = residuals
    d_p, d_y = _window_steps(radius, step, epsilon, offset)[1](*maps, weights, cotangent)
    window_weights = maps[2]
    return d_p, d_y, None if window_weights is None else jnp.zeros_like(window_weights)


_window_log_det.defvjp(_window_log_det_fwd, _window_log_det_bwd)


# --- The two-pass shifted Cholesky QR in float32 (TPU) ---------------------------------------


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


def _two_pass_chunk(maps, radius, step, epsilon, offset):
    z = _joint_vectors(*maps, radius, step)
    r, r_inv = _joint_factor(z, epsilon)
    return _trailing_log_diagonal(r, offset), _gradient_weights(r, r_inv, offset)


@partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _two_pass_log_det(p_maps, y_maps, window_weights, radius, step, epsilon, offset):
    return _two_pass_log_det_fwd(p_maps, y_maps, window_weights, radius, step, epsilon, offset)[0]


def _two_pass_log_det_fwd(p_maps, y_maps, window_weights, radius, step, epsilon, offset):
    function = partial(_two_pass_chunk, radius=radius, step=step, epsilon=epsilon, offset=offset)
    maps = (p_maps, y_maps, window_weights)
    value, weights = _map_chunks(function, maps, radius, step, p_maps)
    return value, (maps, weights)


def _two_pass_log_det_bwd(radius, step, epsilon, offset, residuals, cotangent):
    del epsilon, offset
    maps, weights = residuals

    def chunk(args):
        (p, y, window_weights), w, g = args
        # The cotangent scales the small k x k matrix, not the 2d x L product.
        scaled = (2.0 * g[..., None, None]) * w
        vectors_of = partial(
            _joint_vectors, window_weights=window_weights, radius=radius, step=step
        )
        return _map_gradients(vectors_of, p, y, scaled, radius, step)

    d_p, d_y = _map_chunks(chunk, (maps, weights, cotangent), radius, step, maps[0])
    window_weights = maps[2]
    return d_p, d_y, None if window_weights is None else jnp.zeros_like(window_weights)


_two_pass_log_det.defvjp(_two_pass_log_det_fwd, _two_pass_log_det_bwd)


# --- Entry points -----------------------------------------------------------------------------


def region_log_det(p_maps, y_maps, window_weights, radius, step, epsilon, offset):
    """``sum(log(diag(chol(M + eps I)) + offset))`` for each leading index of two maps, with
    float64 sums and algebra: lag products for windows at spacing 1 without weights on large
    enough maps (``numerics.uses_lag_products``), weighted region vectors otherwise.

    ``p_maps``, ``y_maps``: ``[..., *spatial]`` (downsampled) probability and target maps,
    whose ``radius`` box windows at spacing ``step`` (one entry per spatial axis) are the region
    vectors. ``window_weights``:
    ``None``, or ``[..., L]`` 0/1 weights of those windows (0 drops a window from the statistics;
    not differentiated). With ``offset = 0`` this is ``logdet(M + eps I) / 2``; the reference's
    "log trace" route uses ``offset = 1e-8``. The result has the maps' dtype.
    """
    rank = len(radius)
    spatial = p_maps.shape[-rank:]
    if numerics.uses_lag_products(spatial, radius, step, window_weights is not None):
        lead = p_maps.shape[:-rank]
        flat = [m.reshape(-1, *spatial) for m in (p_maps, y_maps)]
        return _lag_log_det(*flat, radius, epsilon, offset).reshape(lead)
    return _window_log_det(p_maps, y_maps, window_weights, radius, step, epsilon, offset)


def lower_bound(
    p_maps: jnp.ndarray,
    y_maps: jnp.ndarray,
    window_weights: jnp.ndarray | None,
    *,
    radius: Sizes,
    step: Sizes,
    epsilon: float,
    offset: float,
    dtype,
) -> jnp.ndarray:
    """``0.5 logdet(M + eps I) / d`` per example and class of downsampled ``[N, C, *spatial]``
    maps, ``[N, C]``, in ``dtype`` (float32, or float64 for float64 statistics).

    ``window_weights``: ``None`` or ``[N, L]`` 0/1 weights of the windows, shared by the classes.
    On CPU and GPU the statistics run in float64 whatever ``dtype``; on TPU in float32.
    """
    if window_weights is not None:
        window_weights = jnp.broadcast_to(
            window_weights[:, None], (*p_maps.shape[:2], window_weights.shape[-1])
        )
    maps = tuple(None if m is None else m.astype(dtype) for m in (p_maps, y_maps, window_weights))

    def float64_statistics(*maps):
        return region_log_det(*maps, radius, step, epsilon, offset)

    def two_pass_float32(*maps):
        p, y, weights = (None if m is None else m.astype(jnp.float32) for m in maps)
        return _two_pass_log_det(p, y, weights, radius, step, epsilon, offset).astype(dtype)

    # 0.5 * logdet = sum(log(diag(chol))), so the 0.5 and the 2 of the reference cancel.
    log_det = jax.lax.platform_dependent(*maps, tpu=two_pass_float32, default=float64_statistics)
    return log_det / region_size(radius)
