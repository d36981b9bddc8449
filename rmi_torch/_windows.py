"""Downsampling (pooling, resizing) and region windows on ``[N, C, *spatial]`` maps (images
``[N, C, H, W]``, volumes ``[N, C, D, H, W]``), and which windows a pixel mask leaves whole.
Spatial options are tuples, one entry per spatial axis."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from rmi_core.geometry import (
    Sizes,
    corner_aligned_taps,
    nearest_source_indices,
    offset_cells,
    region_size,
    window_grid,
    window_step,
)
from rmi_core.shapes import empty_window_error

# PyTorch's pooling by number of spatial axes.
_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
# Its linear resize with aligned corners, by number of spatial axes.
_LINEAR_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


def _padding(stride: Sizes) -> tuple[int, ...]:
    return tuple(s // 2 for s in stride)


def max_pool_with_indices(x: torch.Tensor, stride: Sizes) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`downsample`'s max pooling, with each cell's argmax as a flat index into its map."""
    pool = _MAX_POOL[len(stride)]
    return pool(x, kernel_size=stride, stride=stride, padding=_padding(stride), return_indices=True)


def downsample(x: torch.Tensor, method: str, stride: Sizes) -> torch.Tensor:
    """Pool ``x`` as the reference does before extracting regions (padding ``stride // 2``)."""
    if max(stride) == 1 or method == "region-extraction":
        return x
    if method == "max":
        return _MAX_POOL[len(stride)](
            x, kernel_size=stride, stride=stride, padding=_padding(stride)
        )
    # count_include_pad defaults to True: padded zeros count in the average, as in the reference.
    return _AVG_POOL[len(stride)](x, kernel_size=stride, stride=stride, padding=_padding(stride))


def region_vectors(x: torch.Tensor, radius: Sizes, step: Sizes) -> torch.Tensor:
    """The ``radius`` box windows of ``[N, C, *spatial]`` maps at spacing ``step``, as a strided
    view ``[N, C, *radius, *grid]``.

    Copied into ``[N, C, d, L]`` it is ``F.unfold``'s layout for images (window row, then
    column; windows row-major), and ``rmi_jax``'s ``region_vectors``. It stays a view (the
    window axes cannot merge without a copy), so the statistics copy it straight into their
    buffer: about twice as fast as ``im2col`` on CPU."""
    rank = len(radius)
    windows = x
    for axis, (r, s) in enumerate(zip(radius, step, strict=True)):
        windows = windows.unfold(2 + axis, r, s)  # [N, C, *grid, *radius] at the end
    grid_axes = range(2, 2 + rank)
    return windows.permute(0, 1, *(2 + rank + i for i in range(rank)), *grid_axes)


def fold_windows(vectors: torch.Tensor, size: Sizes, radius: Sizes, step: Sizes) -> torch.Tensor:
    """Adjoint of :func:`region_vectors`: ``[N, C, d, L]`` window values summed back onto the
    ``[N, C, *size]`` maps."""
    batch, channels = vectors.shape[:2]
    if len(size) == 2:  # im2col's adjoint, one kernel
        columns = vectors.reshape(batch, -1, vectors.shape[-1])
        folded = F.fold(columns, output_size=size, kernel_size=radius, stride=step)
        return folded.view(batch, channels, *size)
    # PyTorch has no fold for volumes: each offset's values go onto its strided grid of cells.
    grid = window_grid(size, radius, step)
    values = vectors.reshape(batch, channels, region_size(radius), *grid)
    maps = vectors.new_zeros((batch, channels, *size))
    for index, offset in enumerate(np.ndindex(*radius)):
        maps[(slice(None), slice(None), *offset_cells(offset, step, grid))] += values[:, :, index]
    return maps


def downsample_validity(valid: torch.Tensor, method: str, stride: Sizes) -> torch.Tensor:
    """Which downsampled cells of a boolean ``[N, *spatial]`` pixel mask are valid: those whose
    pooling window holds no masked pixel (padding is not a pixel). Region extraction keeps the
    pixels."""
    if max(stride) == 1 or method == "region-extraction":
        return valid
    masked = downsample((~valid).unsqueeze(1).float(), "max", stride).squeeze(1)
    return masked == 0


def window_weights(valid_cells: torch.Tensor, radius: Sizes, step: Sizes, dtype) -> torch.Tensor:
    """``[N, *cells]`` booleans -> ``[N, L]``: 1 for the region windows (in
    :func:`region_vectors` order) made of valid cells only, 0 for those touching a masked one."""
    masked = (~valid_cells).unsqueeze(1).to(dtype)
    return 1.0 - _MAX_POOL[len(radius)](masked, kernel_size=radius, stride=step).flatten(1)


def masked_window_weights(
    mask: torch.Tensor,
    name: str,
    *,
    radius: Sizes,
    method: str,
    stride: Sizes,
    dtype: torch.dtype,
) -> torch.Tensor:
    """``[N, *spatial]`` pixel mask -> ``[N, L]`` 0/1 weights of the region windows it leaves
    whole.

    Raises if ``mask`` (called ``name`` in the message) leaves an example without any window.
    """
    cells = downsample_validity(mask, method, stride)
    weights = window_weights(cells, radius, window_step(method, stride), dtype)
    empty = torch.nonzero(weights.sum(dim=-1) == 0).flatten()
    if empty.numel():
        raise empty_window_error(name, empty.tolist(), radius=radius, method=method, stride=stride)
    return weights


def resize_nearest(maps: torch.Tensor, size: Sizes) -> torch.Tensor:
    """Nearest-neighbour resize of the last ``len(size)`` axes to ``size``, by
    ``interpolate(mode="nearest")``'s float32 index rule. Gathered rather than interpolated:
    ``interpolate`` takes float64 indices for float64 volumes (measured, PyTorch 2.13: 106 -> 26
    reads source 53 at output 13, the float32 rule 52), and it wants channels."""
    for dim, size_out in zip(range(-len(size), 0), size, strict=True):
        maps = _take(maps, nearest_source_indices(maps.shape[dim], size_out), dim)
    return maps


def resize_linear_corners(maps: torch.Tensor, size: Sizes) -> torch.Tensor:
    """Bilinear (images) or trilinear (volumes) resize of ``[N, C, *spatial]`` maps to ``size``
    with aligned corners."""
    mode = _LINEAR_MODES[len(size)]
    return F.interpolate(maps, size=tuple(size), mode=mode, align_corners=True)


def _take(x: torch.Tensor, indices, dim: int) -> torch.Tensor:
    return x.index_select(dim, torch.as_tensor(indices, device=x.device))


def resize_validity(valid: torch.Tensor, size: Sizes) -> torch.Tensor:
    """Which cells of the resized ``[N, *spatial]`` maps come from valid pixels only: every
    linear tap of nonzero weight, and the nearest-neighbour source, must be valid.

    The taps of a cell are the product of its taps along each axis, so their validity is
    checked one axis after the other; the nearest source is one pixel, read apart.
    """
    taps_valid = valid
    for dim, size_out in zip(range(-len(size), 0), size, strict=True):
        lower, upper, weight = corner_aligned_taps(valid.shape[dim], size_out)
        upper_unused = torch.as_tensor(weight == 0, device=valid.device)
        upper_unused = upper_unused.view(-1, *(1 for _ in range(-dim - 1)))
        taps_valid = _take(taps_valid, lower, dim) & (_take(taps_valid, upper, dim) | upper_unused)
    return taps_valid & resize_nearest(valid, size)
