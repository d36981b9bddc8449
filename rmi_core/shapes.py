"""Checks of array shapes (tuples of ints) for both backends: ranks and layouts, the target's
and mask's shapes against the prediction's, and room for one region after downsampling, with
the messages users see. Rank 4 is an image batch, rank 5 a volume batch."""

from __future__ import annotations

import numbers

from rmi_core.geometry import (
    Sizes,
    downsampled_shape,
    formatted,
    label_map_shape,
    minimum_input_shape,
    minimum_label_input_shape,
)
from rmi_core.options import POOL_WAYS, type_error

# The spatial axes' names by rank of the prediction: images and volumes.
SPATIAL_NAMES = {4: "H, W", 5: "D, H, W"}


def spatial_names(rank: int) -> str:
    return SPATIAL_NAMES[rank]


def check_rank(name: str, shape: Sizes, layouts: dict[int, str]) -> None:
    """Rank 4 (images) or 5 (volumes); ``layouts`` describes each rank's layout."""
    if len(shape) not in layouts:
        described = " or ".join(f"rank {rank} ({layout})" for rank, layout in layouts.items())
        raise ValueError(f"{name} must have {described}, got shape {tuple(shape)}")


def channels_first_shape(name: str, shape: Sizes, channel_axis: object) -> tuple:
    """``shape`` with its ``channel_axis`` moved to position 1 (``[N, C, *spatial]``).

    The batch is axis 0 in every layout, so the classes may sit on any other axis.
    """
    if isinstance(channel_axis, bool) or not isinstance(channel_axis, numbers.Integral):
        raise type_error("channel_axis", channel_axis, "an int")
    rank = len(shape)
    if not -rank < channel_axis < rank or channel_axis == 0:
        allowed = ", ".join(str(a) for a in (*range(1, rank), *range(-1, -rank, -1)))
        last, first = ("NHWC", "NCHW") if rank == 4 else ("NDHWC", "NCDHW")
        raise ValueError(
            f"channel_axis must be one of {allowed} for rank-{rank} {name} (axis 0 is the "
            f"batch; -1 is {last}, 1 is {first}), got {channel_axis}"
        )
    axis = channel_axis % rank
    rest = [size for i, size in enumerate(shape) if i != axis]
    return (rest[0], shape[axis], *rest[1:])


def check_floating(name: str, is_floating: bool, dtype_name: str) -> None:
    if not is_floating:
        raise TypeError(f"{name} must have a floating dtype, got {dtype_name}")


def check_dense_shapes(
    name: str,
    channels_first: Sizes,
    shape: Sizes,
    target_shape: Sizes,
    *,
    radius: Sizes,
    method: str,
    stride: Sizes,
) -> None:
    """Target shape, a non-empty batch and class axis, and room for one region.

    ``name`` is the prediction's argument name, ``shape`` its shape as given and
    ``channels_first`` the same in ``[N, C, *spatial]`` order.
    """
    if tuple(target_shape) != tuple(shape):
        raise ValueError(
            f"target must have the shape of {name} {tuple(shape)}, got shape {tuple(target_shape)}"
        )
    if channels_first[0] == 0 or channels_first[1] == 0:
        raise ValueError(
            f"{name} must have at least one example and one class, got shape {tuple(shape)}"
        )
    spatial = tuple(channels_first[2:])
    how = f"downsampling_method={method!r} with stride={_option(stride)}"
    minimum = minimum_input_shape(radius, method, stride)
    maps = downsampled_shape(spatial, method, stride)
    _check_regions_fit(f"{name}'s", spatial, maps, radius, how, minimum)


def check_mask_shape(name: str, mask_shape: Sizes, shape: Sizes, channel_axis: int) -> None:
    """``valid_mask`` has the shape of the prediction ``name`` (``shape``) without its classes."""
    axis = channel_axis % len(shape)
    expected = tuple(size for i, size in enumerate(shape) if i != axis)
    if tuple(mask_shape) != expected:
        raise ValueError(
            f"valid_mask must have the shape of {name} without its channel axis {expected} "
            f"({name} {tuple(shape)}, channel_axis={channel_axis}), got shape {tuple(mask_shape)}"
        )


def check_label_shapes(
    channels_first: Sizes,
    shape: Sizes,
    labels_shape: Sizes,
    *,
    num_classes: int,
    channel_axis: int,
    radius: Sizes,
    pool_way: int,
    stride: Sizes,
) -> None:
    """Label-map shapes against the logits (``shape`` as given, ``channels_first`` in
    ``[N, C, *spatial]`` order)."""
    batch, classes, *spatial = channels_first
    expected = (batch, *spatial)
    if tuple(labels_shape) != expected:
        raise ValueError(
            f"labels must have shape [N, {spatial_names(len(shape))}] = {expected} to match "
            f"logits of shape {tuple(shape)}, got shape {tuple(labels_shape)}"
        )
    if batch == 0:
        raise ValueError(f"logits must have at least one example, got shape {tuple(shape)}")
    if classes != num_classes:
        raise ValueError(
            f"num_classes={num_classes} must equal the number of channels of logits, got "
            f"{classes} channels on channel_axis={channel_axis} (shape {tuple(shape)})"
        )
    how = f"rmi_pool_way={pool_way} ({POOL_WAYS[pool_way]}) with rmi_pool_stride={_option(stride)}"
    minimum = minimum_label_input_shape(radius, pool_way, stride)
    maps = label_map_shape(tuple(spatial), pool_way, stride)
    _check_regions_fit("logits'", tuple(spatial), maps, radius, how, minimum, "rmi_")


def _option(sizes: Sizes):
    """A per-axis option as the user would write it: an int when all axes agree."""
    return sizes[0] if len(set(sizes)) == 1 else tuple(sizes)


def _check_regions_fit(owner, size, map_size, radius, how, minimum, prefix="") -> None:
    """Raise unless a ``radius`` box fits in the downsampled ``map_size``: ``size`` is the
    input's, ``owner`` the argument's name, ``how`` the downsampling, ``minimum`` the smallest
    input size, ``prefix`` that of the radius option's name."""
    too_small = any(m < r for m, r in zip(map_size, radius, strict=True))
    if not too_small and all(n >= m for n, m in zip(size, minimum, strict=True)):
        return
    if too_small:
        why = (
            f"becomes {formatted(map_size)} after {how}, smaller than "
            f"{prefix}radius={_option(radius)}: no region fits"
        )
    else:  # an empty axis that the padding alone would turn into a cell
        why = f"is empty ({how}): no region fits"
    raise ValueError(
        f"{owner} spatial size {formatted(size)} {why}; spatial size must be at least "
        f"{formatted(minimum)} for these options"
    )


def empty_window_error(
    name: str, examples: list[int], *, radius: Sizes, method: str, stride: Sizes
) -> ValueError:
    """The error for a mask that leaves ``examples`` without a single whole region window."""
    return ValueError(
        f"{name} leaves example(s) {examples} without a region window: every "
        f"{formatted(radius)} window of the downsampled map (downsampling_method="
        f"{method!r}, stride={_option(stride)}) touches a masked pixel; each example needs at "
        f"least one window of valid pixels"
    )
