"""Downsampling (pooling, resizing) and region windows on maps of any number of spatial axes
(the last ``len(stride)`` or ``len(radius)`` axes: ``[..., H, W]`` images, ``[..., D, H, W]``
volumes), and which windows a pixel mask leaves whole. Spatial options are tuples, one entry
per spatial axis."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from rmi_core.geometry import (
    Sizes,
    corner_aligned_taps,
    nearest_source_indices,
    offset_cells,
    pooled_size,
    region_size,
    window_grid,
    window_step,
)
from rmi_core.shapes import empty_window_error

Axes = tuple[int, ...]


def _pool_windows(x: jnp.ndarray, stride: Sizes, init: float, op, axes: Axes) -> jnp.ndarray:
    """``op``-reduction of each ``stride`` box (one side per axis of ``axes``) of ``x``, the
    padding (``stride // 2`` on both sides, as PyTorch's) filled with ``init``.

    XLA runs this as one pass over ``x``. Taking the windows apart as ``prod(stride)`` strided
    views instead left them materialised whenever a second computation read them.
    """
    window, padding = [1] * x.ndim, [(0, 0)] * x.ndim
    for axis, s in zip(axes, stride, strict=True):
        window[axis], padding[axis] = s, (s // 2, s // 2)
    # A NumPy init value stays concrete under jit, so JAX sees a max (sum) reduction and not a
    # generic one, which it cannot differentiate (second order under jit needs it).
    return jax.lax.reduce_window(x, np.asarray(init, x.dtype), op, window, window, padding)


def _window_blocks(x: jnp.ndarray, stride: Sizes, pad_value: float, axes: Axes):
    """``x`` padded and reshaped so that each pooling window is a ``stride`` block.

    Every pooled axis of size ``n`` becomes two, ``(pooled_size(n), s)``. Returns the blocks
    and their within-window axes. XLA fuses the pad and the reshape into whatever consumes the
    blocks, so no padded copy of ``x`` is made. ``axes`` are in increasing order.
    """
    sides = dict(zip(axes, stride, strict=True))
    widths, blocked_shape = [], []
    for axis, size in enumerate(x.shape):
        if axis in sides:
            s = sides[axis]
            count = pooled_size(size, s)
            widths.append((s // 2, count * s - size - s // 2, 0))
            blocked_shape += [count, s]
        else:
            widths.append((0, 0, 0))
            blocked_shape.append(size)
    padded = jax.lax.pad(x, jnp.asarray(pad_value, x.dtype), widths)
    return padded.reshape(blocked_shape), _window_axes(axes)


def _window_axes(axes: Axes) -> Axes:
    """Where the within-window axes of :func:`_window_blocks` land (``axes`` increasing)."""
    return tuple(axis + i + 1 for i, axis in enumerate(axes))


def _cells_as_blocks(cells: jnp.ndarray, stride: Sizes, axes: Axes):
    """Each pooled cell's value repeated over its window, in :func:`_window_blocks` layout."""
    window_axes = _window_axes(axes)
    sides = dict(zip(window_axes, stride, strict=True))
    expanded = jnp.expand_dims(cells, window_axes)
    return jnp.broadcast_to(expanded, tuple(sides.get(a, n) for a, n in enumerate(expanded.shape)))


def _from_window_blocks(blocks: jnp.ndarray, stride: Sizes, shape: tuple[int, ...], axes: Axes):
    """The inverse of :func:`_window_blocks`: blocks back to ``shape``, the padding cropped
    and pixels that no window covers set to zero."""
    sides = dict(zip(axes, stride, strict=True))
    merged_shape, widths = [], []
    for axis, size in enumerate(shape):
        s = sides.get(axis)
        covered = size if s is None else pooled_size(size, s) * s
        merged_shape.append(covered)
        widths.append((0, 0, 0) if s is None else (-(s // 2), size - covered + s // 2, 0))
    return jax.lax.pad(blocks.reshape(merged_shape), jnp.zeros((), blocks.dtype), widths)


def _window_positions(blocks_shape, stride: Sizes, window_axes: Axes) -> jnp.ndarray:
    """Row-major index of each element of the blocks inside its window: PyTorch's scan order.

    int32 even where int8 would do: XLA's CPU backend gives an int8 min-reduction to a library
    kernel that leaves the pass feeding it unfused, a full-size array written and read back
    (measured: ~15 ms of ~115 at 8x21x256x256).
    """
    position = jnp.zeros(blocks_shape, jnp.int32)
    for axis, s in zip(window_axes, stride, strict=True):
        position = position * s + jax.lax.broadcasted_iota(jnp.int32, blocks_shape, axis)
    return position


# The input shape is a static argument, not a residual: residuals are arrays, and a shape with
# a symbolic (shape-polymorphic) size would become one.
@partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x: jnp.ndarray, stride: Sizes, axes: Axes, shape: tuple) -> jnp.ndarray:
    return _max_pool_fwd(x, stride, axes, shape)[0]


def _max_pool_fwd(x, stride, axes, shape):
    del shape
    pooled = _pool_windows(x, stride, -jnp.inf, jax.lax.max, axes)
    # The position of each window's first maximum, found by a reduction: XLA keeps its result,
    # where an elementwise formula would be re-evaluated for every pixel in the backward pass.
    blocks, window_axes = _window_blocks(x, stride, -jnp.inf, axes)
    positions = _window_positions(blocks.shape, stride, window_axes)
    is_maximum = blocks == jnp.expand_dims(pooled, window_axes)
    first = jnp.where(is_maximum, positions, region_size(stride)).min(axis=window_axes)
    return pooled, first


def _max_pool_bwd(stride, axes, shape, first, cotangent):
    # The gradient goes to the first maximum of each window only, as in PyTorch.
    cotangent = _cells_as_blocks(cotangent, stride, axes)
    positions = _window_positions(cotangent.shape, stride, _window_axes(axes))
    winner = positions == _cells_as_blocks(first, stride, axes)
    return (_from_window_blocks(jnp.where(winner, cotangent, 0.0), stride, shape, axes),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _avg_pool(x: jnp.ndarray, stride: Sizes, axes: Axes, shape: tuple) -> jnp.ndarray:
    del shape
    # Padded zeros count in the average (PyTorch's count_include_pad=True).
    return _pool_windows(x, stride, 0.0, jax.lax.add, axes) / region_size(stride)


def _avg_pool_fwd(x, stride, axes, shape):
    return _avg_pool(x, stride, axes, shape), None


def _avg_pool_bwd(stride, axes, shape, residuals, cotangent):
    del residuals
    blocks = _cells_as_blocks(cotangent / region_size(stride), stride, axes)
    return (_from_window_blocks(blocks, stride, shape, axes),)


_avg_pool.defvjp(_avg_pool_fwd, _avg_pool_bwd)


def downsample(x: jnp.ndarray, method: str, stride: Sizes, axes: Axes | None = None) -> jnp.ndarray:
    """Pool ``x`` over its spatial ``axes`` (default: the last ``len(stride)``), ``stride[i]``
    along ``axes[i]``, as the reference does; axes of stride 1 are left alone."""
    axes = tuple(range(x.ndim - len(stride), x.ndim)) if axes is None else axes
    pooled = sorted((a % x.ndim, s) for a, s in zip(axes, stride, strict=True) if s > 1)
    if not pooled or method == "region-extraction":
        return x
    axes, stride = tuple(a for a, _ in pooled), tuple(s for _, s in pooled)
    if method == "max":
        return _max_pool(x, stride, axes, x.shape)
    return _avg_pool(x, stride, axes, x.shape)


def region_vectors(x: jnp.ndarray, radius: Sizes, step: Sizes) -> jnp.ndarray:
    """All ``radius`` box windows over the last ``len(radius)`` axes of ``x`` at spacing
    ``step``, as ``[..., d, L]`` with ``d = prod(radius)``.

    The entries of a vector are the window's cells in row-major order of their offsets (for
    images ``i * R + j``, ``torch.nn.functional.unfold`` order); windows are enumerated
    row-major.
    """
    rank = len(radius)
    grid = window_grid(x.shape[-rank:], radius, step)

    shifted = [x[(Ellipsis, *offset_cells(offset, step, grid))] for offset in np.ndindex(*radius)]
    lead = x.shape[:-rank]
    return jnp.stack(shifted, axis=-rank - 1).reshape(*lead, region_size(radius), -1)


def downsample_validity(valid: jnp.ndarray, method: str, stride: Sizes, axes: Axes | None = None):
    """Which downsampled cells of a boolean pixel mask are valid: those whose pooling window
    holds no masked pixel (padding is not a pixel). Region extraction keeps the pixels."""
    if max(stride) == 1 or method == "region-extraction":
        return valid
    masked = downsample(jnp.logical_not(valid).astype(jnp.float32), "max", stride, axes)
    return masked == 0


def window_weights(valid_cells: jnp.ndarray, radius: Sizes, step: Sizes, dtype) -> jnp.ndarray:
    """``[..., *cells]`` booleans -> ``[..., L]``: 1 for the region windows (in
    :func:`region_vectors` order) made of valid cells only, 0 for those touching a masked one."""
    masked = jnp.logical_not(valid_cells).astype(dtype)
    return 1.0 - region_vectors(masked, radius, step).max(axis=-2)


def masked_window_weights(
    mask: jnp.ndarray, name: str, *, radius: Sizes, method: str, stride: Sizes, dtype
) -> jnp.ndarray:
    """``[N, *spatial]`` pixel mask -> ``[N, L]`` 0/1 weights of the region windows it leaves whole.

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


def resize_nearest(maps: jnp.ndarray, size: Sizes) -> jnp.ndarray:
    """Nearest-neighbour resize of the last ``len(size)`` axes to ``size``, PyTorch's rule."""
    for axis, size_out in zip(range(-len(size), 0), size, strict=True):
        maps = jnp.take(maps, nearest_source_indices(maps.shape[axis], size_out), axis=axis)
    return maps


def _resize_axis_linear(x: jnp.ndarray, axis: int, size_out: int) -> jnp.ndarray:
    lower, upper, weight = corner_aligned_taps(x.shape[axis], size_out)
    shape = [1] * x.ndim
    shape[axis] = size_out
    weight = jnp.asarray(weight.reshape(shape), x.dtype)
    # Two gathers and a blend, not an interpolation matrix: no matmul, so no reduced-precision
    # (TF32/bf16) accelerator kernels, and the cost stays linear in the map size.
    return jnp.take(x, lower, axis=axis) * (1.0 - weight) + jnp.take(x, upper, axis=axis) * weight


def resize_linear_corners(maps: jnp.ndarray, size: Sizes) -> jnp.ndarray:
    """Linear resize of the last ``len(size)`` axes to ``size`` with aligned corners, one axis
    after the other: PyTorch's ``interpolate(mode="bilinear"`` (images) ``/ "trilinear"``
    (volumes) ``, align_corners=True)``, which ``jax.image.resize`` does not offer."""
    for axis, size_out in zip(range(maps.ndim - len(size), maps.ndim), size, strict=True):
        maps = _resize_axis_linear(maps, axis, size_out)
    return maps


def resize_validity(valid: jnp.ndarray, size: Sizes) -> jnp.ndarray:
    """Which cells of the resized maps come from valid pixels only: every linear tap of
    nonzero weight, and the nearest-neighbour source, must be valid.

    The taps of a cell are the product of its taps along each axis, so their validity is
    checked one axis after the other; the nearest source is one pixel, read apart.
    """
    taps_valid = valid
    for axis, size_out in zip(range(-len(size), 0), size, strict=True):
        lower, upper, weight = corner_aligned_taps(valid.shape[axis], size_out)
        upper_unused = jnp.asarray(weight == 0).reshape((-1,) + (1,) * (-axis - 1))
        taps_valid = jnp.take(taps_valid, lower, axis=axis) & (
            jnp.take(taps_valid, upper, axis=axis) | upper_unused
        )
    return taps_valid & resize_nearest(valid, size)
