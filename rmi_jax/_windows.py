"""Downsampling and region extraction on ``[..., H, W]`` maps."""

from __future__ import annotations

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


def _pooling_windows(x: jnp.ndarray, stride: int, pad_value: float) -> jnp.ndarray:
    """Pad like PyTorch's pooling and regroup into ``[..., Ho, Wo, stride * stride]`` windows.

    The window's last axis is row-major (kernel row, then column), the order in which PyTorch's
    max pooling scans a window, so "first maximum" means the same thing in both backends.
    """
    pad = stride // 2
    height, width = x.shape[-2:]
    out_h, out_w = pooled_size(height, stride), pooled_size(width, stride)
    # Pad on the right just enough to cover the last window, then drop what no window reaches.
    pad_h = max(out_h * stride - height - pad, 0)
    pad_w = max(out_w * stride - width - pad, 0)
    widths = [(0, 0)] * (x.ndim - 2) + [(pad, pad_h), (pad, pad_w)]
    x = jnp.pad(x, widths, constant_values=pad_value)[..., : out_h * stride, : out_w * stride]
    x = x.reshape(*x.shape[:-2], out_h, stride, out_w, stride)
    x = jnp.swapaxes(x, -3, -2)
    return x.reshape(*x.shape[:-4], out_h, out_w, stride * stride)


def _max_pool(x: jnp.ndarray, stride: int) -> jnp.ndarray:
    windows = _pooling_windows(x, stride, -jnp.inf)
    # Select the first maximum with a one-hot mask rather than reducing with max: the gradient
    # then flows to one element per window, as in PyTorch, instead of being split between ties;
    # and unlike a gather, its transpose is elementwise (a scatter is slow on CPU).
    first_max = jax.nn.one_hot(jnp.argmax(windows, axis=-1), windows.shape[-1], dtype=bool)
    return jnp.where(first_max, windows, 0.0).sum(axis=-1)


def _avg_pool(x: jnp.ndarray, stride: int) -> jnp.ndarray:
    # Padded zeros count in the average (PyTorch's count_include_pad=True).
    return _pooling_windows(x, stride, 0.0).mean(axis=-1)


def downsample(x: jnp.ndarray, method: str, stride: int) -> jnp.ndarray:
    """Pool ``x`` over its last two axes as the reference does before extracting regions."""
    if stride == 1 or method == "region-extraction":
        return x
    if method == "max":
        return _max_pool(x, stride)
    return _avg_pool(x, stride)


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
