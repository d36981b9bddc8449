"""Downsampling (pooling, resizing) and region windows on ``[..., H, W]`` maps, and which
windows a pixel mask leaves whole."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from rmi_core.options import (
    corner_aligned_taps,
    empty_window_error,
    nearest_source_indices,
    pooled_size,
    window_grid,
    window_step,
)

Axes = tuple[int, int]


def _pool_windows(x: jnp.ndarray, stride: int, init: float, op, axes: Axes) -> jnp.ndarray:
    """``op``-reduction of each ``stride x stride`` pooling window of ``x`` over ``axes``, the
    padding (``stride // 2`` on both sides, as PyTorch's) filled with ``init``.

    XLA runs this as one pass over ``x``. Taking the windows apart as ``stride**2`` strided
    views instead left them materialised whenever a second computation read them.
    """
    pad = stride // 2
    window, padding = [1] * x.ndim, [(0, 0)] * x.ndim
    for axis in axes:
        window[axis], padding[axis] = stride, (pad, pad)
    # A NumPy init value stays concrete under jit, so JAX sees a max (sum) reduction and not a
    # generic one, which it cannot differentiate (second order under jit needs it).
    return jax.lax.reduce_window(x, np.asarray(init, x.dtype), op, window, window, padding)


def _window_blocks(x: jnp.ndarray, stride: int, pad_value: float, axes: Axes):
    """``x`` padded and reshaped so that each pooling window is a ``stride x stride`` block.

    Every spatial axis of size ``n`` becomes two, ``(pooled_size(n), stride)``. Returns the
    blocks and their two within-window axes. XLA fuses the pad and the reshape into whatever
    consumes the blocks, so no padded copy of ``x`` is made.
    """
    pad = stride // 2
    widths, blocked_shape = [], []
    for axis, size in enumerate(x.shape):
        if axis in axes:
            count = pooled_size(size, stride)
            widths.append((pad, count * stride - size - pad, 0))
            blocked_shape += [count, stride]
        else:
            widths.append((0, 0, 0))
            blocked_shape.append(size)
    padded = jax.lax.pad(x, jnp.asarray(pad_value, x.dtype), widths)
    return padded.reshape(blocked_shape), _window_axes(axes)


def _window_axes(axes: Axes) -> Axes:
    """Where the within-window axes of :func:`_window_blocks` land."""
    first, second = sorted(axes)
    return first + 1, second + 2


def _cells_as_blocks(cells: jnp.ndarray, stride: int, axes: Axes):
    """Each pooled cell's value repeated over its window, in :func:`_window_blocks` layout."""
    window_axes = _window_axes(axes)
    expanded = jnp.expand_dims(cells, window_axes)
    shape = tuple(stride if a in window_axes else n for a, n in enumerate(expanded.shape))
    return jnp.broadcast_to(expanded, shape)


def _from_window_blocks(blocks: jnp.ndarray, stride: int, shape: tuple[int, ...], axes: Axes):
    """The inverse of :func:`_window_blocks`: blocks back to ``shape``, the padding cropped
    and pixels that no window covers set to zero."""
    pad = stride // 2
    merged_shape, widths = [], []
    for axis, size in enumerate(shape):
        covered = pooled_size(size, stride) * stride if axis in axes else size
        merged_shape.append(covered)
        widths.append((-pad, size - covered + pad, 0) if axis in axes else (0, 0, 0))
    return jax.lax.pad(blocks.reshape(merged_shape), jnp.zeros((), blocks.dtype), widths)


def _window_positions(blocks_shape, stride: int, window_axes: Axes) -> jnp.ndarray:
    """Row-major index of each element of the blocks inside its window: PyTorch's scan order.

    int32 even where int8 would do: XLA's CPU backend gives an int8 min-reduction to a library
    kernel that leaves the pass feeding it unfused, a full-size array written and read back
    (measured: ~15 ms of ~115 at 8x21x256x256).
    """
    rows, cols = (jax.lax.broadcasted_iota(jnp.int32, blocks_shape, axis) for axis in window_axes)
    return rows * stride + cols


# The input shape is a static argument, not a residual: residuals are arrays, and a shape with
# a symbolic (shape-polymorphic) size would become one.
@partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x: jnp.ndarray, stride: int, axes: Axes, shape: tuple) -> jnp.ndarray:
    return _max_pool_fwd(x, stride, axes, shape)[0]


def _max_pool_fwd(x, stride, axes, shape):
    del shape
    pooled = _pool_windows(x, stride, -jnp.inf, jax.lax.max, axes)
    # The position of each window's first maximum, found by a reduction: XLA keeps its result,
    # where an elementwise formula would be re-evaluated for every pixel in the backward pass.
    blocks, window_axes = _window_blocks(x, stride, -jnp.inf, axes)
    positions = _window_positions(blocks.shape, stride, window_axes)
    is_maximum = blocks == jnp.expand_dims(pooled, window_axes)
    first = jnp.where(is_maximum, positions, stride * stride).min(axis=window_axes)
    return pooled, first


def _max_pool_bwd(stride, axes, shape, first, cotangent):
    # The gradient goes to the first maximum of each window only, as in PyTorch.
    cotangent = _cells_as_blocks(cotangent, stride, axes)
    positions = _window_positions(cotangent.shape, stride, _window_axes(axes))
    winner = positions == _cells_as_blocks(first, stride, axes)
    return (_from_window_blocks(jnp.where(winner, cotangent, 0.0), stride, shape, axes),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _avg_pool(x: jnp.ndarray, stride: int, axes: Axes, shape: tuple) -> jnp.ndarray:
    del shape
    # Padded zeros count in the average (PyTorch's count_include_pad=True).
    return _pool_windows(x, stride, 0.0, jax.lax.add, axes) / (stride * stride)


def _avg_pool_fwd(x, stride, axes, shape):
    return _avg_pool(x, stride, axes, shape), None


def _avg_pool_bwd(stride, axes, shape, residuals, cotangent):
    del residuals
    blocks = _cells_as_blocks(cotangent / (stride * stride), stride, axes)
    return (_from_window_blocks(blocks, stride, shape, axes),)


_avg_pool.defvjp(_avg_pool_fwd, _avg_pool_bwd)


def downsample(x: jnp.ndarray, method: str, stride: int, axes: Axes | None = None) -> jnp.ndarray:
    """Pool ``x`` over its spatial ``axes`` (default: the last two) as the reference does."""
    if stride == 1 or method == "region-extraction":
        return x
    axes = (x.ndim - 2, x.ndim - 1) if axes is None else tuple(a % x.ndim for a in axes)
    if method == "max":
        return _max_pool(x, stride, axes, x.shape)
    return _avg_pool(x, stride, axes, x.shape)


def region_vectors(x: jnp.ndarray, radius: int, step: int) -> jnp.ndarray:
    """All ``radius x radius`` windows inside ``x``, as ``[..., radius**2, L]``.

    Entry ``i * radius + j`` of a vector is the window's pixel at row ``i``, column ``j``
    (``torch.nn.functional.unfold`` order); windows are enumerated row-major.
    """
    rows, cols = window_grid(*x.shape[-2:], radius, step)
    shifted = [
        x[..., i : i + step * (rows - 1) + 1 : step, j : j + step * (cols - 1) + 1 : step]
        for i in range(radius)
        for j in range(radius)
    ]
    return jnp.stack(shifted, axis=-3).reshape(*x.shape[:-2], radius * radius, rows * cols)


def downsample_validity(valid: jnp.ndarray, method: str, stride: int, axes: Axes | None = None):
    """Which downsampled cells of a boolean pixel mask are valid: those whose pooling window
    holds no masked pixel (padding is not a pixel). Region extraction keeps the pixels."""
    if stride == 1 or method == "region-extraction":
        return valid
    masked = downsample(jnp.logical_not(valid).astype(jnp.float32), "max", stride, axes)
    return masked == 0


def window_weights(valid_cells: jnp.ndarray, radius: int, step: int, dtype) -> jnp.ndarray:
    """``[..., h, w]`` booleans -> ``[..., L]``: 1 for the region windows (in
    :func:`region_vectors` order) made of valid cells only, 0 for those touching a masked one."""
    masked = jnp.logical_not(valid_cells).astype(dtype)
    return 1.0 - region_vectors(masked, radius, step).max(axis=-2)


def masked_window_weights(
    mask: jnp.ndarray, name: str, *, radius: int, method: str, stride: int, dtype
) -> jnp.ndarray:
    """``[N, H, W]`` pixel mask -> ``[N, L]`` 0/1 weights of the region windows it leaves whole.

    Raises if a concrete ``mask`` (called ``name`` in the message) leaves an example without
    any window; a traced one cannot be checked.
    """
    cells = downsample_validity(mask, method, stride)
    weights = window_weights(cells, radius, window_step(method, stride), dtype)
    if not isinstance(weights, jax.core.Tracer):
        empty = np.flatnonzero(np.asarray(weights).sum(axis=-1) == 0)
        if empty.size:
            raise empty_window_error(
                name, empty.tolist(), radius=radius, method=method, stride=stride
            )
    return weights


def resize_nearest(maps: jnp.ndarray, size: tuple[int, int]) -> jnp.ndarray:
    """Nearest-neighbour resize of the last two axes to ``size``, PyTorch's index rule."""
    rows = nearest_source_indices(maps.shape[-2], size[0])
    cols = nearest_source_indices(maps.shape[-1], size[1])
    return jnp.take(jnp.take(maps, rows, axis=-2), cols, axis=-1)


def _resize_axis_linear(x: jnp.ndarray, axis: int, size_out: int) -> jnp.ndarray:
    lower, upper, weight = corner_aligned_taps(x.shape[axis], size_out)
    shape = [1] * x.ndim
    shape[axis] = size_out
    weight = jnp.asarray(weight.reshape(shape), x.dtype)
    # Two gathers and a blend, not an interpolation matrix: no matmul, so no reduced-precision
    # (TF32/bf16) accelerator kernels, and the cost stays linear in the map size.
    return jnp.take(x, lower, axis=axis) * (1.0 - weight) + jnp.take(x, upper, axis=axis) * weight


def resize_bilinear_corners(maps: jnp.ndarray, size: tuple[int, int]) -> jnp.ndarray:
    """Bilinear resize of the last two axes to ``size`` with aligned corners.

    PyTorch's ``interpolate(mode="bilinear", align_corners=True)``, which ``jax.image.resize``
    does not offer.
    """
    rows_done = _resize_axis_linear(maps, maps.ndim - 2, size[0])
    return _resize_axis_linear(rows_done, maps.ndim - 1, size[1])


def resize_validity(valid: jnp.ndarray, size: tuple[int, int]) -> jnp.ndarray:
    """Which cells of the resized maps come from valid pixels only: every bilinear tap of
    nonzero weight, and the nearest-neighbour source, must be valid.

    The bilinear taps of a cell are the product of its row taps and its column taps, so their
    validity is checked one axis after the other; the nearest source is one pixel, read apart.
    """
    taps_valid = valid
    for axis, size_out in zip((-2, -1), size, strict=True):
        lower, upper, weight = corner_aligned_taps(valid.shape[axis], size_out)
        upper_unused = jnp.asarray(weight == 0).reshape((-1, 1) if axis == -2 else (-1,))
        taps_valid = jnp.take(taps_valid, lower, axis=axis) & (
            jnp.take(taps_valid, upper, axis=axis) | upper_unused
        )
    return taps_valid & resize_nearest(valid, size)
