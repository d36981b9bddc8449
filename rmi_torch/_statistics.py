"""Region statistics and the log-determinant of the posterior covariance.

With ``Z = [P; Y]`` the centred region vectors of prediction and target (``2d x L``), the joint
matrix ``J = Z Z^T + eps I`` has the posterior covariance plus ``eps I`` (``M + eps I``, see
``docs/semantics.md``) as the Schur complement of its leading ``d x d`` block, so the trailing
``d`` diagonal entries of the Cholesky factor of ``J`` are those of the Cholesky factor of
``M + eps I``.

The factor ``R`` (``R^T R = J``) comes from a shifted Cholesky QR in two passes of the data
``A = [Z^T; sqrt(eps) I]``, never from ``J`` alone: ``J`` is squared data, and in float32 it rounds
away the ``eps``-sized information the loss is made of. Pass one factors ``J + shift I`` with a
shift of a few rounding units of ``trace(J)`` (``rmi_core.numerics.shift_units``), so it cannot
fail; pass two factors the Gram matrix of the well-conditioned ``A R1^-1``, recomputed from the
data; ``R = R2 R1``. The same algorithm as ``rmi_jax._statistics``, so both backends round
alike. Every product runs in true float32 (or float64) whatever the caller's
``torch.set_float32_matmul_precision`` or TF32 switches say (:func:`full_precision_matmuls`).

float64 statistics of windows at spacing 1 without weights (the drop-in default,
``use_double_precision=True``, with max or average pooling and no mask) on maps of at least
``numerics.LAG_PRODUCTS_MIN_WINDOWS`` windows come from lag products instead (``rmi_core.lags``,
docs/computation.md#lag-products): no region vectors, one factor of the exact float64 Gram.
float32 statistics keep the two-pass route: in eager PyTorch on the CPU,
float64 lag products cost more than float32 region vectors and their products (measured:
344 against 246 ms fwd+bwd at 8x21x256x256, benchmarks/RESULTS.md).

On the CPU the maps are taken a few at a time, building their region vectors inside the chunk,
so the ``2d``-fold copy of the maps is never held whole (fresh memory that size costs more to
touch than the products on it); the backward pass rebuilds them the same way. Accelerators take
all maps at once, up to a memory budget (``rmi_core.numerics.CHUNK_BYTES``).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import threading
from collections.abc import Iterator

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from rmi_core import lags, numerics
from rmi_core.geometry import Sizes, region_size, window_grid
from rmi_core.numerics import maps_per_chunk, shift_units
from rmi_torch._windows import fold_windows, region_vectors

# The float32 matmul settings that the statistics override, as (object, attribute) pairs: the
# per-backend switches of PyTorch >= 2.9 (which `set_float32_matmul_precision` and `allow_tf32`
# write too), else the legacy cuBLAS switch. cuDNN runs no product of the statistics.
if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
    _MATMUL_SWITCHES = (
        (torch.backends.cuda.matmul, "fp32_precision", "ieee"),
        (torch.backends.mkldnn.matmul, "fp32_precision", "ieee"),
    )
else:  # pragma: no cover - PyTorch < 2.9
    _MATMUL_SWITCHES = ((torch.backends.cuda.matmul, "allow_tf32", False),)
_LEGACY = len(_MATMUL_SWITCHES) == 1

# The switches are process-wide: they are set to full precision while any statistics run and
# restored when the last one ends. The count and the lock make concurrent calls from several
# threads safe (the first saves the caller's settings, the last restores them).
_precision_lock = threading.Lock()
_precision_users = 0
_saved_switches: list = []
_saved_precision: list[str] = []


@contextlib.contextmanager
def full_precision_matmuls() -> Iterator[None]:
    """Run the enclosed matrix products in true float32, whatever the global settings.

    ``torch.set_float32_matmul_precision("high"/"medium")`` lets float32 products run in TF32
    (NVIDIA GPUs) or bfloat16 (CPUs with AMX/AVX512-BF16), and ``allow_tf32`` does the same for
    cuBLAS; either rounds away the ``eps``-sized signal of the statistics. The caller's settings
    come back exactly on exit, also when the enclosed code raises. Other threads' products run at
    full precision too while the statistics run.
    """
    global _precision_users
    with _precision_lock:
        if _precision_users == 0:
            _saved_switches[:] = [getattr(owner, name) for owner, name, _ in _MATMUL_SWITCHES]
            _saved_precision[:] = [torch.get_float32_matmul_precision()] if _LEGACY else []
            for owner, name, full in _MATMUL_SWITCHES:
                setattr(owner, name, full)
            if _LEGACY:  # pragma: no cover - PyTorch < 2.9
                torch.set_float32_matmul_precision("highest")
        _precision_users += 1
    try:
        yield
    finally:
        with _precision_lock:
            _precision_users -= 1
            if _precision_users == 0:
                for (owner, name, _), saved in zip(_MATMUL_SWITCHES, _saved_switches, strict=True):
                    setattr(owner, name, saved)
                for precision in _saved_precision:  # pragma: no cover - PyTorch < 2.9
                    torch.set_float32_matmul_precision(precision)


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
    # cholesky_ex does not raise: a matrix it cannot factor (NaN input) gives NaN entries, so
    # NaN in the inputs comes out as a NaN loss, as in rmi_jax, not as a LinAlgError.
    factor, _ = torch.linalg.cholesky_ex(gram, upper=True)
    return factor


def _triangular_inverse(r: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(r.shape[-1], dtype=r.dtype, device=r.device).expand_as(r)
    return torch.linalg.solve_triangular(r, eye, upper=True)


def _joint_factor(z: torch.Tensor, epsilon: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Upper-triangular R with R^T R = z z^T + epsilon I, and R^-1; z is ``[.., k, L]``."""
    k, windows = z.shape[-2:]
    eye = torch.eye(k, dtype=z.dtype, device=z.device)
    gram = z @ z.mT
    trace = torch.diagonal(gram, dim1=-2, dim2=-1).sum(-1)[..., None, None]
    shift = shift_units(k, windows) * torch.finfo(z.dtype).eps * trace
    r1 = _upper_cholesky(gram + (epsilon + shift) * eye)
    r1_inv = _triangular_inverse(r1)
    # Rows of A R1^-1, transposed: the data part R1^-T Z and the ridge part sqrt(eps) R1^-T.
    transformed = r1_inv.mT @ z
    r2 = _upper_cholesky(transformed @ transformed.mT + epsilon * (r1_inv.mT @ r1_inv))
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


def _joint_vectors(
    p_maps, y_maps, window_weights, radius: Sizes, step: Sizes, dtype
) -> torch.Tensor:
    """Centred ``[P; Y]`` region vectors ``[M, 2d, L]`` of ``[M, *spatial]`` maps, in ``dtype``,
    built straight into one buffer; ``window_weights``: ``None`` or ``[M, L]``."""
    p_windows = region_vectors(p_maps.unsqueeze(1), radius, step)[:, 0]
    z = torch.empty((p_maps.shape[0], 2, *p_windows.shape[1:]), dtype=dtype, device=p_maps.device)
    z[:, 0].copy_(p_windows)
    z[:, 1].copy_(region_vectors(y_maps.unsqueeze(1), radius, step)[:, 0])
    return _centre_(z.view(p_maps.shape[0], 2 * region_size(radius), -1), window_weights)


def _chunks(maps: torch.Tensor, radius: Sizes, step: Sizes, dtype) -> list[slice]:
    """Slices of the ``M`` maps of ``[M, *spatial]`` ``maps``: cache-sized on the CPU, as large
    as the accelerator budget allows elsewhere."""
    count = maps.shape[0]
    windows = math.prod(window_grid(maps.shape[1:], radius, step))
    itemsize = torch.finfo(dtype).bits // 8
    budget = numerics.CHUNK_BYTES["cpu" if maps.device.type == "cpu" else "accelerator"]
    size = maps_per_chunk(count, windows, region_size(radius), itemsize, budget)
    return [slice(start, start + size) for start in range(0, count, size)]


def _vectors_by_chunk(p_maps, y_maps, window_weights, radius: Sizes, step: Sizes, dtype):
    """``(chunk, region vectors of its maps)`` for each chunk of :func:`_chunks`."""
    for chunk in _chunks(p_maps, radius, step, dtype):
        weights = None if window_weights is None else window_weights[chunk]
        yield chunk, _joint_vectors(p_maps[chunk], y_maps[chunk], weights, radius, step, dtype)


class _RegionLogDet(torch.autograd.Function):
    """The log-determinant of each map pair's regions, with the closed-form backward.

    Works on the ``[M, *spatial]`` maps of :func:`region_log_det`, a chunk at a time. The centring
    needs no backward of its own: the gradient ``2 W Z`` with respect to the centred ``Z`` has
    zero (weighted) mean over the windows, because ``Z`` has, so it is also the gradient with
    respect to the raw vectors. The backward forms only the rows of ``2 W Z`` whose maps need a
    gradient (the target's usually do not) and folds them back.
    """

    @staticmethod
    def forward(ctx, p_maps, y_maps, window_weights, radius, step, epsilon, offset, dtype):
        values, weights = [], []
        chunks = _vectors_by_chunk(p_maps, y_maps, window_weights, radius, step, dtype)
        with full_precision_matmuls():
            for _, z in chunks:
                r, r_inv = _joint_factor(z, epsilon)
                values.append(_trailing_log_diagonal(r, offset))
                weights.append(_gradient_weights(r, r_inv, offset))
        ctx.save_for_backward(p_maps, y_maps, window_weights, torch.cat(weights))
        ctx.options = (radius, step, dtype)
        return torch.cat(values)

    @staticmethod
    @once_differentiable
    def backward(ctx, cotangent: torch.Tensor):
        p_maps, y_maps, window_weights, weights = ctx.saved_tensors
        radius, step, dtype = ctx.options
        d = region_size(radius)
        grads = [
            torch.empty_like(p_maps, dtype=dtype) if ctx.needs_input_grad[i] else None
            for i in (0, 1)
        ]
        chunks = _vectors_by_chunk(p_maps, y_maps, window_weights, radius, step, dtype)
        with full_precision_matmuls():
            for chunk, z in chunks:
                # The cotangent scales the small k x k matrix, not the 2d x L result.
                scaled = 2.0 * cotangent[chunk, None, None] * weights[chunk]
                for i, grad in enumerate(grads):
                    if grad is not None:
                        vectors = (scaled[:, i * d : (i + 1) * d] @ z).unsqueeze(1)
                        folded = fold_windows(vectors, p_maps.shape[1:], radius, step)
                        grad[chunk] = folded[:, 0]
        return (*grads, None, None, None, None, None, None)


# --- float64 lag products (windows at spacing 1 without weights, where float64 exists) -------

# The lag products take a chunk of maps of about this many float64 bytes at a time (it stays in
# a core's cache). A block whose shifted windows (``prod(2R - 1)`` copies of it) fit in it takes
# all shifts at once from a copy of them; a larger one takes one shift at a time from views.
LAG_CHUNK_BYTES = 1 << 20
# einsum letters: the pixel axes of a block, and the shift axes of its windows.
_LETTERS = ("HWDEFG", "ijklmn")


def _device_array(values: np.ndarray, like: torch.Tensor, dtype=None) -> torch.Tensor:
    return torch.as_tensor(values, dtype=dtype, device=like.device)


def _padded(maps: torch.Tensor, plan: lags.Plan) -> torch.Tensor:
    pads = [p for r in reversed(plan.padding) for p in (r, r)]  # F.pad lists the last axis first
    return torch.nn.functional.pad(maps, pads)


def _shifted(maps, padded, block, shift, plan: lags.Plan) -> torch.Tensor:
    """``maps`` at ``u + shift`` for the pixels ``u`` of ``block`` (a view): of the map itself
    where the shifted block lies inside it (always for the bulk), else of its zero-padded copy."""
    starts = [g.start + s for g, s in zip(block, shift, strict=True)]
    stops = [g.stop + s for g, s in zip(block, shift, strict=True)]
    if all(0 <= lo and hi <= n for lo, hi, n in zip(starts, stops, plan.shape, strict=True)):
        return maps[(Ellipsis, *(slice(lo, hi) for lo, hi in zip(starts, stops, strict=True)))]
    pads = plan.padding
    rows = (slice(lo + p, hi + p) for lo, hi, p in zip(starts, stops, pads, strict=True))
    return padded[(Ellipsis, *rows)]


def _contract_offsets(values: torch.Tensor, block, kept_first: bool) -> torch.Tensor:
    """``rmi_jax._statistics._contract_offsets``: between a block's pixels and the region
    offsets through each kept axis' indicator; size-1 axes where the block is reduced."""
    letters = "cdefghijkmopqrstuvwxyz"
    axes = len(block)
    offset_letters, pixel_letters = letters[:axes], letters[axes : 2 * axes].upper()
    kept = [i for i, group in enumerate(block) if not group.reduced]
    operands = [_device_array(block[i].indicator, values, values.dtype) for i in kept]
    subscripts = [pixel_letters[i] + offset_letters[i] for i in kept]
    kept_pixels = "".join(pixel_letters[i] for i in kept)
    kept_offsets = "".join(offset_letters[i] for i in kept)
    source, target = (kept_pixels, kept_offsets) if kept_first else (offset_letters, kept_pixels)
    spec = ",".join([f"bn{source}", *subscripts]) + f"->bn{target}"
    out = torch.einsum(spec, values, *operands)
    for i, group in enumerate(block):
        if group.reduced:
            out = out.unsqueeze(2 + i)
    return out


@functools.lru_cache
def _product_index(shape: tuple[int, ...], radius: tuple[int, ...]) -> np.ndarray:
    """Where each product lag of ``lags.plan(shape, radius)`` (all but the two sums) is in the
    flattened ``[pair (PP, YY, PY), shift]`` products of :func:`_block_products`."""
    plan = lags.plan(shape, radius)
    pairs = {(lags.PREDICTION, lags.PREDICTION): 0, (lags.TARGET, lags.TARGET): 1}
    pairs[(lags.PREDICTION, lags.TARGET)] = 2
    spans = tuple(2 * r - 1 for r in radius)
    return np.array(
        [
            pairs[(lag.first, lag.second)] * math.prod(spans)
            + int(np.ravel_multi_index(tuple(np.add(lag.shift, radius) - 1), spans))
            for lag in plan.lags
            if lag.second is not None
        ]
    )


def _shift_windows(padded: torch.Tensor, block, plan: lags.Plan) -> torch.Tensor:
    """``x(u + s)`` for the pixels ``u`` of ``block`` and every shift ``s`` of the region, as a
    view ``[B, (block axes), (2R - 1 per axis)]`` of the zero-padded map (no copy)."""
    rows = (slice(g.start, g.stop + 2 * (r - 1)) for g, r in zip(block, plan.radius, strict=True))
    windows = padded[(Ellipsis, *rows)]
    for axis, r in enumerate(plan.radius):
        windows = windows.unfold(1 + axis, 2 * r - 1, 1)
    return windows


def _block_products(plan: lags.Plan, maps, padded, block) -> torch.Tensor:
    """The lag sums of one block, ``[B, len(plan.lags), (kept axes)]``: the two maps' sums, then
    the lag products in ``plan.lags`` order, summed over the block's reduced axes."""
    axes = len(plan.shape)
    pixels, shifts = _LETTERS[0][:axes], _LETTERS[1][:axes]
    kept = "".join(p for p, g in zip(pixels, block, strict=True) if not g.reduced)
    reduced = [1 + i for i, g in enumerate(block) if g.reduced]
    firsts = [m[_block_region(block)] for m in maps]

    def summed(values: torch.Tensor) -> torch.Tensor:
        return values.sum(dim=reduced) if reduced else values

    sums = [summed(f) for f in firsts]
    if _windows_bytes(firsts[0], plan) > LAG_CHUNK_BYTES:
        # A large block (the bulk of a large map): one product per lag of two views.
        products = [
            summed(
                firsts[lag.first]
                * _shifted(maps[lag.second], padded[lag.second], block, lag.shift, plan)
            )
            for lag in plan.lags
            if lag.second is not None
        ]
        return torch.stack([*sums, *products], dim=1)
    # A small block (an edge, or a small map): all shifts of a pair at once, from a copy of its
    # shifted windows; fewer, larger kernels.
    windows = [_shift_windows(x, block, plan) for x in padded]
    spec = f"b{pixels},b{pixels}{shifts}->b{kept}{shifts}"
    pairs = [(lags.PREDICTION, lags.PREDICTION), (lags.TARGET, lags.TARGET)]
    pairs.append((lags.PREDICTION, lags.TARGET))
    products = torch.stack([torch.einsum(spec, firsts[a], windows[b]) for a, b in pairs], dim=1)
    products = products.flatten(-axes).movedim(-1, 2).flatten(1, 2)  # [B, pair * shift, kept]
    index = _device_array(_product_index(plan.shape, plan.radius), products)
    return torch.cat([torch.stack(sums, dim=1), products[:, index]], dim=1)


def _lag_window_sums(plan: lags.Plan, maps: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """``T[b, lag, a]`` (``[B, len(plan.lags), d]``, float64): each lag product summed over the
    grid shifted by each offset, from float64 maps ``[B, *S]``, block by block and a cache-sized
    chunk of maps at a time (the shifted windows of a block are copied once for the products)."""
    batch = maps[0].shape[0]
    totals = maps[0].new_zeros((batch, len(plan.lags), *plan.radius))
    for chunk in _lag_chunks(batch, plan):
        chunk_maps = tuple(m[chunk] for m in maps)
        padded = tuple(_padded(m, plan) for m in chunk_maps)
        for block in plan.blocks:
            sums = _block_products(plan, chunk_maps, padded, block)
            totals[chunk] += _contract_offsets(sums, block, kept_first=True)
    return totals.view(batch, len(plan.lags), -1)


def _windows_bytes(block_values: torch.Tensor, plan: lags.Plan) -> int:
    """The size of the shifted windows of ``block_values`` (``[B, (block axes)]``) in float64."""
    return block_values.numel() * math.prod(2 * r - 1 for r in plan.radius) * 8


def _lag_chunks(batch: int, plan: lags.Plan) -> list[slice]:
    """Chunks of the maps whose shifted windows (``prod(2R - 1)`` float64 copies of each map)
    take :data:`LAG_CHUNK_BYTES`."""
    per_map = math.prod(plan.shape) * 8
    size = max(1, min(batch, LAG_CHUNK_BYTES // per_map))
    return [slice(start, start + size) for start in range(0, batch, size)]


def _block_region(block) -> tuple:
    return (Ellipsis, *(slice(g.start, g.stop) for g in block))


def _gathered_sums(values: torch.Tensor, source: np.ndarray) -> torch.Tensor:
    """``sum_j values[:, source[..., j]]``, a zero appended to ``values`` for the index ``n``."""
    values = torch.cat([values, values.new_zeros(values.shape[0], 1)], dim=1)
    return values[:, _device_array(source, values)].sum(dim=-1)


def _lag_correlation(plan: lags.Plan, maps, cotangent: torch.Tensor, wanted) -> list:
    """The gradients of the float64 maps from the cotangent ``[B, len(lags), d]`` of the window
    sums, for the maps ``wanted`` (``None`` for the others): the separable expansion of
    ``rmi_jax._statistics._lag_correlation``, a constant and one coefficient vector per axis
    over every pixel, products of two or more axes' terms added on the corners. Each term
    correlates the shifted windows of a source map with its coefficients, all shifts at once, a
    chunk of maps at a time."""
    batch = cotangent.shape[0]
    flat = cotangent.reshape(batch, -1)
    axes = range(len(plan.shape))
    pixels, shifts = _LETTERS[0][: len(axes)], _LETTERS[1][: len(axes)]
    spans = tuple(2 * r - 1 for r in plan.radius)
    k = math.prod(spans)
    misses = [1.0 - lags.axis_indicator(n, r) for n, r in zip(plan.shape, plan.radius, strict=True)]
    everywhere = [slice(0, n) for n in plan.shape]

    def expansion_term(coefficients, subset, rows) -> torch.Tensor:
        block = tuple(
            lags.Group(r.start, r.stop, i not in subset, misses[i][r]) for i, r in enumerate(rows)
        )
        return (-1.0) ** len(subset) * _contract_offsets(coefficients, block, False)

    def lag_terms(fields, padded, rows) -> torch.Tensor:
        """``sum_t field_t(u) x_t(u + shift_t)`` on ``rows``; each term's field is the sum of
        ``fields`` (``[B, terms, ...]``, size 1 along the axes they do not vary on)."""
        block = tuple(lags.Group(r.start, r.stop, True, None) for r in rows)
        windows = [_shift_windows(x, block, plan) for x in padded]
        total = 0.0
        for field in fields:
            varies = [n != 1 for n in field.shape[2:]]
            letters = "".join(p for p, v in zip(pixels, varies, strict=True) if v)
            sizes = [n for n, v in zip(field.shape[2:], varies, strict=True) if v]
            spec = f"b{shifts}{letters},b{pixels}{shifts}->b{pixels}"
            for source, x_windows in enumerate(windows):
                coefficients = field[:, source * k : (source + 1) * k]
                coefficients = coefficients.reshape(field.shape[0], *spans, *sizes)
                total = total + torch.einsum(spec, coefficients, x_windows)
            total = total + field[:, 2 * k]  # the constant term (the means')
        return total

    def every_pixel(fields, padded) -> torch.Tensor:
        """:func:`lag_terms` over the whole map, a term at a time, in place: the shifted
        windows of the whole map would be ``prod(2R - 1)`` copies of it."""
        block = tuple(lags.Group(0, n, True, None) for n in plan.shape)
        chunk_maps = [
            x[(Ellipsis, *(slice(p, p + n) for p, n in zip(plan.padding, plan.shape, strict=True)))]
            for x in padded
        ]
        total = fields[0][:, 2 * k].expand_as(chunk_maps[0]).clone()
        for f in fields[1:]:
            total += f[:, 2 * k]
        for source in (lags.PREDICTION, lags.TARGET):
            for t, shift in enumerate(itertools.product(*(range(1 - r, r) for r in plan.radius))):
                x = _shifted(chunk_maps[source], padded[source], block, shift, plan)
                for f in fields:
                    total.addcmul_(f[:, source * k + t], x)
        return total

    def gradient(m: int, chunk: slice) -> torch.Tensor:
        source = plan.coefficient_source[m].reshape(-1, 2)
        coefficients = _gathered_sums(flat[chunk], source)
        coefficients = coefficients.view(-1, len(plan.gradient_terms[m]), *plan.radius)
        padded = tuple(_padded(x[chunk], plan) for x in maps)
        fields = [expansion_term(coefficients, (i,), everywhere) for i in axes]
        fields[0] = fields[0] + expansion_term(coefficients, (), everywhere)
        if _windows_bytes(maps[0][chunk], plan) > LAG_CHUNK_BYTES:
            result = every_pixel(fields, padded)
        else:
            result = lag_terms(fields, padded, everywhere)
        for size in range(2, len(plan.shape) + 1):
            for subset in itertools.combinations(axes, size):
                edges = [[g for g in plan.groups[i] if not g.reduced] for i in subset]
                for chosen in itertools.product(*edges):
                    rows = list(everywhere)
                    for i, group in zip(subset, chosen, strict=True):
                        rows[i] = slice(group.start, group.stop)
                    term = expansion_term(coefficients, subset, rows)
                    result[(Ellipsis, *rows)] += lag_terms([term], padded, rows)
        return result

    chunks = _lag_chunks(batch, plan)
    return [
        torch.cat([gradient(m, chunk) for chunk in chunks]) if want else None
        for m, want in enumerate(wanted)
    ]


def _log_det_and_weights(gram: torch.Tensor, epsilon: float, offset: float):
    """Value and gradient weights ``W`` of the centred float64 joint Gram ``[B, 2d, 2d]``, from
    one Cholesky factor of ``gram + eps I`` (exact to float64 rounding of the data's sums)."""
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    r = _upper_cholesky(gram + epsilon * eye)
    r_inv = _triangular_inverse(r)
    return _trailing_log_diagonal(r, offset), _gradient_weights(r, r_inv, offset)


class _LagLogDet(torch.autograd.Function):
    """The log-determinant of each map pair's regions from float64 lag products
    (``rmi_core.lags``), with the closed-form backward: the cotangent of the window sums,
    ``W`` on the Gram's entries and ``-2 W mean`` on the means', correlated with the maps."""

    @staticmethod
    def forward(ctx, p_maps, y_maps, radius, epsilon, offset, dtype):
        plan = lags.plan(tuple(p_maps.shape[1:]), radius)
        maps = (p_maps.double(), y_maps.double())
        sums = _lag_window_sums(plan, maps).flatten(1)
        count = math.prod(plan.grid)
        means = sums[:, _device_array(plan.sum_source, sums)] / count
        gram = (
            sums[:, _device_array(plan.gram_source, sums)]
            - count * means[:, :, None] * means[:, None, :]
        )
        with full_precision_matmuls():
            value, weights = _log_det_and_weights(gram, epsilon, offset)
        ctx.save_for_backward(p_maps, y_maps, weights, means)
        ctx.options = (plan, dtype)
        return value.to(dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, cotangent: torch.Tensor):
        p_maps, y_maps, weights, means = ctx.saved_tensors
        plan, dtype = ctx.options
        batch = weights.shape[0]
        window_sums = -2.0 * torch.einsum("bkj,bj->bk", weights, means)
        entries = torch.cat([weights.reshape(batch, -1), window_sums], dim=1)
        entries = cotangent.double()[:, None] * entries
        sums = _gathered_sums(entries, plan.cotangent_source).view(batch, len(plan.lags), -1)
        maps = (p_maps.double(), y_maps.double())
        grads = _lag_correlation(plan, maps, sums, ctx.needs_input_grad[:2])
        grads = [None if g is None else g.to(dtype) for g in grads]
        return (*grads, None, None, None, None)


def region_log_det(p_maps, y_maps, window_weights, radius, step, epsilon, offset, dtype):
    """``sum(log(diag(chol(M + eps I)) + offset))`` for each ``(n, c)`` of two maps, ``[N, C]``.

    ``p_maps``, ``y_maps``: ``[N, C, *spatial]`` (downsampled) probability and target maps,
    whose ``radius`` box windows at spacing ``step`` (one entry per spatial axis) are the region
    vectors, taken in ``dtype``.
    ``window_weights``: ``None``, or ``[N, L]`` 0/1 weights of those windows, shared by the
    classes (0 drops a window from the statistics). With ``offset = 0`` this is
    ``logdet(M + eps I) / 2``; the reference's "log trace" route uses ``offset = 1e-8``.
    float64 statistics of windows at spacing 1 without weights come from lag products on large
    enough maps (``numerics.uses_lag_products``).
    """
    n, c = p_maps.shape[:2]
    lag_products = numerics.uses_lag_products(
        tuple(p_maps.shape[2:]), radius, step, window_weights is not None
    )
    if lag_products and dtype == torch.float64:
        flat = [maps.reshape(n * c, *maps.shape[2:]) for maps in (p_maps, y_maps)]
        return _LagLogDet.apply(*flat, radius, epsilon, offset, dtype).view(n, c)
    if window_weights is not None:
        window_weights = window_weights.repeat_interleave(c, dim=0)  # one row per (n, c)
    flat = [maps.reshape(n * c, *maps.shape[2:]) for maps in (p_maps, y_maps)]
    log_det = _RegionLogDet.apply(*flat, window_weights, radius, step, epsilon, offset, dtype)
    return log_det.view(n, c)


def lower_bound(
    p_maps: torch.Tensor,
    y_maps: torch.Tensor,
    window_weights: torch.Tensor | None,
    *,
    radius: Sizes,
    step: Sizes,
    epsilon: float,
    offset: float,
    dtype: torch.dtype,
) -> torch.Tensor:
    """``0.5 logdet(M + eps I) / d`` per example and class of downsampled ``[N, C, *spatial]``
    maps, ``[N, C]``, with the statistics in ``dtype``.

    ``window_weights``: ``None`` or ``[N, L]`` 0/1 weights of the windows, shared by the classes.
    Autocast is switched off here: it would run the matrix products in bfloat16 or float16,
    which cannot carry the ``eps``-sized signal; the statistics stay in ``dtype``.
    """
    with torch.autocast(p_maps.device.type, enabled=False):
        # 0.5 * logdet = sum(log(diag(chol))), so the 0.5 and the 2 of the reference cancel.
        log_det = region_log_det(
            p_maps, y_maps, window_weights, radius, step, epsilon, offset, dtype
        )
    return log_det / region_size(radius)
