"""Downsampling and region extraction on ``[..., H, W]`` maps."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

DOWNSAMPLING_METHODS = ("max", "avg", "region-extraction")


def pooled_size(size: int, stride: int) -> int:
    """Output length of a pooling with kernel = stride = ``stride`` and padding ``stride // 2``."""
    return (size + 2 * (stride // 2) - stride) // stride + 1


def map_size_after_downsampling(size: int, method: str, stride: int) -> int:
    """Length of one spatial axis after the downsampling step (unchanged for region extraction)."""
    if stride == 1 or method == "region-extraction":
        return size
    return pooled_size(size, stride)


def window_step(method: str, stride: int) -> int:
    """Spacing between region windows: region extraction subsamples here instead of pooling."""
    return stride if method == "region-extraction" else 1


def minimum_input_size(radius: int, method: str, stride: int) -> int:
    """Smallest input length per axis that leaves room for one ``radius x radius`` window."""
    if stride == 1 or method == "region-extraction":
        return radius
    return radius * stride - 2 * (stride // 2)


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
    return jax.lax.reduce_window(x, jnp.asarray(init, x.dtype), op, window, window, padding)


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


@partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _max_pool(x: jnp.ndarray, stride: int, axes: Axes) -> jnp.ndarray:
    return _max_pool_fwd(x, stride, axes)[0]


def _max_pool_fwd(x, stride, axes):
    pooled = _pool_windows(x, stride, -jnp.inf, jax.lax.max, axes)
    # The position of each window's first maximum, found by a reduction: XLA keeps its result,
    # where an elementwise formula would be re-evaluated for every pixel in the backward pass.
    blocks, window_axes = _window_blocks(x, stride, -jnp.inf, axes)
    positions = _window_positions(blocks.shape, stride, window_axes)
    is_maximum = blocks == jnp.expand_dims(pooled, window_axes)
    first = jnp.where(is_maximum, positions, stride * stride).min(axis=window_axes)
    return pooled, (first, x.shape)


def _max_pool_bwd(stride, axes, residuals, cotangent):
    # The gradient goes to the first maximum of each window only, as in PyTorch.
    first, shape = residuals
    cotangent = _cells_as_blocks(cotangent, stride, axes)
    positions = _window_positions(cotangent.shape, stride, _window_axes(axes))
    winner = positions == _cells_as_blocks(first, stride, axes)
    return (_from_window_blocks(jnp.where(winner, cotangent, 0.0), stride, shape, axes),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _avg_pool(x: jnp.ndarray, stride: int, axes: Axes) -> jnp.ndarray:
    # Padded zeros count in the average (PyTorch's count_include_pad=True).
    return _pool_windows(x, stride, 0.0, jax.lax.add, axes) / (stride * stride)


def _avg_pool_fwd(x, stride, axes):
    return _avg_pool(x, stride, axes), x.shape


def _avg_pool_bwd(stride, axes, shape, cotangent):
    blocks = _cells_as_blocks(cotangent / (stride * stride), stride, axes)
    return (_from_window_blocks(blocks, stride, shape, axes),)


_avg_pool.defvjp(_avg_pool_fwd, _avg_pool_bwd)


def downsample(x: jnp.ndarray, method: str, stride: int, axes: Axes | None = None) -> jnp.ndarray:
    """Pool ``x`` over its spatial ``axes`` (default: the last two) as the reference does."""
    if stride == 1 or method == "region-extraction":
        return x
    axes = (x.ndim - 2, x.ndim - 1) if axes is None else tuple(a % x.ndim for a in axes)
    if method == "max":
        return _max_pool(x, stride, axes)
    return _avg_pool(x, stride, axes)


def region_vectors(x: jnp.ndarray, radius: int, step: int) -> jnp.ndarray:
    """All ``radius x radius`` windows inside ``x``, as ``[..., radius**2, L]``.

    Entry ``i * radius + j`` of a vector is the window's pixel at row ``i``, column ``j``
    (``torch.nn.functional.unfold`` order); windows are enumerated row-major.
    """
    height, width = x.shape[-2:]
    rows = (height - radius) // step + 1
    cols = (width - radius) // step + 1
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
