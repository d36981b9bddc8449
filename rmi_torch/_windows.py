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


def window_view(x: torch.Tensor, radius: int, step: int) -> torch.Tensor:
    """The ``radius x radius`` windows of ``[N, C, H, W]`` maps at spacing ``step``, as a strided
    view ``[N, C, R, R, h, w]``: copied into ``[N, C, R*R, h*w]`` it is ``F.unfold``'s layout
    (window row, then column; windows row-major), about twice as fast as ``im2col`` on CPU."""
    windows = x.unfold(2, radius, step).unfold(3, radius, step)  # [N, C, h, w, R, R]
    return windows.permute(0, 1, 4, 5, 2, 3)


def fold_windows(
    vectors: torch.Tensor, size: tuple[int, int], radius: int, step: int
) -> torch.Tensor:
    """Adjoint of :func:`window_view`: ``[N, C, R*R, L]`` window values summed back onto the
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
    """``[N, h, w]`` booleans -> ``[N, L]``: 1 for the region windows (in :func:`window_view`
    order) made of valid cells only, 0 for those touching a masked one."""
    masked = (~valid_cells).unsqueeze(1).to(dtype)
    return 1.0 - F.max_pool2d(masked, kernel_size=radius, stride=step).flatten(1)
