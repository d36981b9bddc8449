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
