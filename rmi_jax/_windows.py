"""Downsampling and region extraction on ``[..., H, W]`` maps."""

from __future__ import annotations

import functools
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


def _view_range(offset: int, stride: int, count: int, size: int) -> tuple[int, int]:
    """First and last ``r < count`` with ``0 <= offset + stride * r < size``."""
    first = -(offset // stride) if offset < 0 else 0
    last = min(count - 1, (size - 1 - offset) // stride)
    return first, last


Axes = tuple[int, int]


def _padded_windows(x: jnp.ndarray, stride: int, pad_value: float, axes: Axes) -> list[jnp.ndarray]:
    """The ``stride * stride`` strided views of the pooling windows of ``x`` over ``axes``.

    View ``i * stride + j`` holds each window's element at kernel row ``i``, column ``j``: the
    row-major order in which PyTorch's max pooling scans a window, so "first maximum" agrees.
    Padding positions hold ``pad_value``; only the small views are padded, never ``x`` itself.
    """
    pad = stride // 2
    views = []
    for i in range(stride):
        for j in range(stride):
            starts, stops, steps = [0] * x.ndim, list(x.shape), [1] * x.ndim
            widths, out_shape = [(0, 0)] * x.ndim, list(x.shape)
            for axis, offset in zip(axes, (i - pad, j - pad), strict=True):
                count = pooled_size(x.shape[axis], stride)
                first, last = _view_range(offset, stride, count, x.shape[axis])
                starts[axis], stops[axis] = offset + stride * first, offset + stride * last + 1
                steps[axis], widths[axis], out_shape[axis] = (
                    stride,
                    (first, count - 1 - last),
                    count,
                )
            if any(start >= stop for start, stop in zip(starts, stops, strict=True)):
                # A kernel position that falls on padding in every window (tiny inputs).
                views.append(jnp.full(out_shape, pad_value, x.dtype))
                continue
            view = jax.lax.slice(x, starts, stops, steps)
            views.append(jnp.pad(view, widths, constant_values=pad_value))
    return views


def _spread_to_input(pooled: jnp.ndarray, stride: int, shape: tuple[int, ...], axes: Axes):
    """Each pooled cell's value on every input pixel of its window (zero where none covers).

    Broadcasts, reshapes and a crop only, so XLA fuses it into the elementwise code around it.
    """
    pad = stride // 2
    full = pooled
    for axis in axes:
        size = full.shape[axis]
        full = jnp.expand_dims(full, axis + 1)
        repeated = (*full.shape[: axis + 1], stride, *full.shape[axis + 2 :])
        full = jnp.broadcast_to(full, repeated).reshape(
            *full.shape[:axis], size * stride, *full.shape[axis + 2 :]
        )
        full = jax.lax.slice_in_dim(full, pad, min(pad + shape[axis], size * stride), axis=axis)
        widths = [(0, 0)] * full.ndim
        widths[axis] = (0, shape[axis] - full.shape[axis])
        full = jnp.pad(full, widths)
    return full


def _position_in_window(shape: tuple[int, ...], stride: int, axes: Axes) -> jnp.ndarray:
    """For every input pixel, its row-major index inside its pooling window (broadcastable)."""
    pad = stride // 2
    rows, cols = (
        jax.lax.broadcasted_iota(
            jnp.int32, [shape[a] if a == axis else 1 for a in range(len(shape))], axis
        )
        for axis in axes
    )
    return ((rows + pad) % stride) * stride + (cols + pad) % stride


@partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _max_pool(x: jnp.ndarray, stride: int, axes: Axes) -> jnp.ndarray:
    return _max_pool_fwd(x, stride, axes)[0]


def _max_pool_fwd(x, stride, axes):
    views = _padded_windows(x, stride, -jnp.inf, axes)
    pooled = functools.reduce(jnp.maximum, views)
    # Index of the first view holding the maximum, scanning backwards so the first one wins.
    first = jnp.zeros(pooled.shape, jnp.int8)
    for index in reversed(range(len(views))):
        first = jnp.where(views[index] == pooled, jnp.int8(index), first)
    return pooled, (first, x.shape)


def _max_pool_bwd(stride, axes, residuals, cotangent):
    # The gradient goes to the first maximum of each window only, as in PyTorch. Pixels that no
    # window covers get -1, which matches no position.
    first, shape = residuals
    owner = _spread_to_input(first.astype(jnp.int32) + 1, stride, shape, axes) - 1
    winner = owner == _position_in_window(shape, stride, axes)
    return (jnp.where(winner, _spread_to_input(cotangent, stride, shape, axes), 0.0),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _avg_pool(x: jnp.ndarray, stride: int, axes: Axes) -> jnp.ndarray:
    # Padded zeros count in the average (PyTorch's count_include_pad=True).
    return functools.reduce(jnp.add, _padded_windows(x, stride, 0.0, axes)) / (stride * stride)


def _avg_pool_fwd(x, stride, axes):
    return _avg_pool(x, stride, axes), x.shape


def _avg_pool_bwd(stride, axes, shape, cotangent):
    return (_spread_to_input(cotangent, stride, shape, axes) / (stride * stride),)


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
