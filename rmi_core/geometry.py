"""The size arithmetic of pooling, resizing and region windows, for any number of spatial axes.

Every spatial option arrives here as a tuple with one entry per spatial axis
(:func:`rmi_core.options.per_axis` makes it one), and every axis is treated alike: an image has
two spatial axes ``(H, W)``, a volume three ``(D, H, W)``. The semantics are in
``docs/semantics.md#volumes-and-per-axis-regions``.
"""

from __future__ import annotations

import math

import numpy as np

Sizes = tuple[int, ...]


def formatted(sizes: Sizes) -> str:
    """``(3, 4)`` as ``"3x4"``: how the messages write a shape or a box."""
    return "x".join(str(n) for n in sizes)


def region_size(radius: Sizes) -> int:
    """``d``: the length of a region vector, the number of cells of a ``radius`` box."""
    return math.prod(radius)


def pooled_size(size: int, stride: int) -> int:
    """Output length of a pooling with kernel = stride = ``stride`` and padding ``stride // 2``."""
    return (size + 2 * (stride // 2) - stride) // stride + 1


def downsampled_shape(shape: Sizes, method: str, stride: Sizes) -> Sizes:
    """Spatial shape after the downsampling step (unchanged for region extraction)."""
    if method == "region-extraction":
        return tuple(shape)
    return tuple(n if s == 1 else pooled_size(n, s) for n, s in zip(shape, stride, strict=True))


def window_step(method: str, stride: Sizes) -> Sizes:
    """Spacing between region windows per axis: region extraction subsamples instead of pooling."""
    return tuple(stride) if method == "region-extraction" else tuple(1 for _ in stride)


def minimum_input_shape(radius: Sizes, method: str, stride: Sizes) -> Sizes:
    """Smallest input length per axis that leaves room for one region window."""

    def smallest(r: int, s: int) -> int:
        if s == 1 or method == "region-extraction":
            return r
        # At least one pixel: with radius 1 and an even stride the padding alone makes one cell.
        return max(1, r * s - 2 * (s // 2))

    return tuple(smallest(r, s) for r, s in zip(radius, stride, strict=True))


def window_grid(shape: Sizes, radius: Sizes, step: Sizes) -> Sizes:
    """Windows per axis of a ``radius`` box at spacing ``step`` inside a map of ``shape``."""
    return tuple((n - r) // s + 1 for n, r, s in zip(shape, radius, step, strict=True))


def offset_cells(offset: Sizes, step: Sizes, grid: Sizes) -> tuple[slice, ...]:
    """The cells that the cell at ``offset`` of every window takes, over a ``grid`` of windows
    ``step`` apart: one strided slice per spatial axis."""
    return tuple(
        slice(a, a + s * (g - 1) + 1, s) for a, s, g in zip(offset, step, grid, strict=True)
    )


def dense_window_grid(shape: Sizes, radius: Sizes, method: str, stride: Sizes) -> Sizes:
    """Windows per axis of a dense-target map of spatial ``shape``."""
    maps = downsampled_shape(shape, method, stride)
    return window_grid(maps, radius, window_step(method, stride))


def label_map_shape(shape: Sizes, pool_way: int, stride: Sizes) -> Sizes:
    """Spatial shape after the label-map downsampling: ``rmi_pool_way=2`` resizes to
    ``n // s`` per axis (when any stride is above 1), the others pool."""
    if pool_way == 2 and max(stride) > 1:
        return tuple(n // s for n, s in zip(shape, stride, strict=True))
    return downsampled_shape(shape, "max", stride)


def label_window_grid(shape: Sizes, radius: Sizes, pool_way: int, stride: Sizes) -> Sizes:
    """Windows per axis of a label map of spatial ``shape`` (spacing 1 after downsampling)."""
    return window_grid(label_map_shape(shape, pool_way, stride), radius, tuple(1 for _ in shape))


def minimum_label_input_shape(radius: Sizes, pool_way: int, stride: Sizes) -> Sizes:
    """Smallest input length per axis that leaves room for one region after downsampling."""
    if pool_way == 2 and max(stride) > 1:
        return tuple(r * s for r, s in zip(radius, stride, strict=True))
    return minimum_input_shape(radius, "max", stride)


def nearest_source_indices(size_in: int, size_out: int) -> np.ndarray:
    """Input index read by each output index of PyTorch's ``interpolate(mode="nearest")``.

    ``floor(i * in / out)`` with the scale and the product in float32, as PyTorch computes
    them: exact arithmetic reads a different row for some sizes (e.g. 106 -> 26).
    """
    positions = np.arange(size_out, dtype=np.float32) * (np.float32(size_in) / size_out)
    return np.minimum(np.floor(positions).astype(np.int32), size_in - 1)


def corner_aligned_taps(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower and upper source index and upper weight of each output of a linear resize with
    aligned corners (output ``i`` sits at input position ``i * (in - 1) / (out - 1)``)."""
    scale = (size_in - 1) / (size_out - 1) if size_out > 1 else 0.0
    positions = np.arange(size_out) * scale
    lower = np.minimum(np.floor(positions).astype(np.int32), size_in - 1)
    upper = np.minimum(lower + 1, size_in - 1)
    return lower, upper, positions - lower
