"""Downsampling (pooling, resizing) and region windows on ``[N, C, H, W]`` maps, and which
windows a pixel mask leaves whole."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rmi_core.options import (
    corner_aligned_taps,
    empty_window_error,
    nearest_source_indices,
    window_step,
)


def max_pool_with_indices(x: torch.Tensor, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`downsample`'s max pooling, with each cell's argmax as a flat index into its plane."""
    return F.max_pool2d(
        x, kernel_size=stride, stride=stride, padding=stride // 2, return_indices=True
    )


def downsample(x: torch.Tensor, method: str, stride: int) -> torch.Tensor:
    """Pool ``x`` as the reference does before extracting regions (padding ``stride // 2``)."""
    if stride == 1 or method == "region-extraction":
        return x
    if method == "max":
        return F.max_pool2d(x, kernel_size=stride, stride=stride, padding=stride // 2)
    # count_include_pad defaults to True: padded zeros count in the average, as in the reference.
    return F.avg_pool2d(x, kernel_size=stride, stride=stride, padding=stride // 2)


def region_vectors(x: torch.Tensor, radius: int, step: int) -> torch.Tensor:
    """The ``radius x radius`` windows of ``[N, C, H, W]`` maps at spacing ``step``, as a strided
    view ``[N, C, R, R, h, w]``.

    Copied into ``[N, C, R*R, h*w]`` it is ``F.unfold``'s layout (window row, then column;
    windows row-major), and ``rmi_jax``'s ``region_vectors``. It stays a view (the two window
    axes cannot merge without a copy), so the statistics copy it straight into their buffer:
    about twice as fast as ``im2col`` on CPU."""
    windows = x.unfold(2, radius, step).unfold(3, radius, step)  # [N, C, h, w, R, R]
    return windows.permute(0, 1, 4, 5, 2, 3)


def fold_windows(
    vectors: torch.Tensor, size: tuple[int, int], radius: int, step: int
) -> torch.Tensor:
    """Adjoint of :func:`region_vectors`: ``[N, C, R*R, L]`` window values summed back onto the
    ``[N, C, H, W]`` maps (``H, W = size``)."""
    columns = vectors.reshape(vectors.shape[0], -1, vectors.shape[-1])
    folded = F.fold(columns, output_size=size, kernel_size=radius, stride=step)
    return folded.view(vectors.shape[0], vectors.shape[1], *size)


def downsample_validity(valid: torch.Tensor, method: str, stride: int) -> torch.Tensor:
    """Which downsampled cells of a boolean ``[N, H, W]`` pixel mask are valid: those whose
    pooling window holds no masked pixel (padding is not a pixel). Region extraction keeps the
    pixels."""
    if stride == 1 or method == "region-extraction":
        return valid
    masked = downsample((~valid).unsqueeze(1).float(), "max", stride).squeeze(1)
    return masked == 0


def window_weights(valid_cells: torch.Tensor, radius: int, step: int, dtype) -> torch.Tensor:
    """``[N, h, w]`` booleans -> ``[N, L]``: 1 for the region windows (in :func:`region_vectors`
    order) made of valid cells only, 0 for those touching a masked one."""
    masked = (~valid_cells).unsqueeze(1).to(dtype)
    return 1.0 - F.max_pool2d(masked, kernel_size=radius, stride=step).flatten(1)


def masked_window_weights(
    mask: torch.Tensor, name: str, *, radius: int, method: str, stride: int, dtype: torch.dtype
) -> torch.Tensor:
    """``[N, H, W]`` pixel mask -> ``[N, L]`` 0/1 weights of the region windows it leaves whole.

    Raises if ``mask`` (called ``name`` in the message) leaves an example without any window.
    """
    cells = downsample_validity(mask, method, stride)
    weights = window_weights(cells, radius, window_step(method, stride), dtype)
    empty = torch.nonzero(weights.sum(dim=-1) == 0).flatten()
    if empty.numel():
        raise empty_window_error(name, empty.tolist(), radius=radius, method=method, stride=stride)
    return weights


def resize_nearest(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of ``[N, C, H, W]`` maps to ``size`` (``interpolate``'s rule)."""
    return F.interpolate(maps, size=size, mode="nearest")


def resize_bilinear_corners(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``[N, C, H, W]`` maps to ``size`` with aligned corners."""
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=True)


def _take(x: torch.Tensor, indices, dim: int) -> torch.Tensor:
    return x.index_select(dim, torch.as_tensor(indices, device=x.device))


def resize_validity(valid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Which cells of the resized ``[N, H, W]`` maps come from valid pixels only: every
    bilinear tap of nonzero weight, and the nearest-neighbour source, must be valid.

    The bilinear taps of a cell are the product of its row taps and its column taps, so their
    validity is checked one axis after the other; the nearest source is one pixel, read apart.
    """
    taps_valid = valid
    for dim, size_out in zip((-2, -1), size, strict=True):
        lower, upper, weight = corner_aligned_taps(valid.shape[dim], size_out)
        upper_unused = torch.as_tensor(weight == 0, device=valid.device)
        upper_unused = upper_unused.view(-1, 1) if dim == -2 else upper_unused
        taps_valid = _take(taps_valid, lower, dim) & (_take(taps_valid, upper, dim) | upper_unused)
    rows = nearest_source_indices(valid.shape[-2], size[0])
    cols = nearest_source_indices(valid.shape[-1], size[1])
    return taps_valid & _take(_take(valid, rows, -2), cols, -1)
