"""Downsampling and region extraction on ``[N, C, H, W]`` maps."""

from __future__ import annotations

import torch
import torch.nn.functional as F

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


def downsample(x: torch.Tensor, method: str, stride: int) -> torch.Tensor:
    """Pool ``x`` as the reference does before extracting regions (padding ``stride // 2``)."""
    if stride == 1 or method == "region-extraction":
        return x
    if method == "max":
        return F.max_pool2d(x, kernel_size=stride, stride=stride, padding=stride // 2)
    # count_include_pad defaults to True: padded zeros count in the average, as in the reference.
    return F.avg_pool2d(x, kernel_size=stride, stride=stride, padding=stride // 2)


def region_vectors(x: torch.Tensor, radius: int, step: int) -> torch.Tensor:
    """All ``radius x radius`` windows inside ``x``, as ``[N, C, radius**2, L]`` (unfold order)."""
    vectors = F.unfold(x, kernel_size=radius, stride=step)
    return vectors.view(*x.shape[:2], radius * radius, -1)


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
