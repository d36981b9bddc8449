"""Everything about the options that does not need an array library, written once for both
backends: the option values and defaults, their checks with the messages users see, the checks of
shapes (tuples of ints), and the size arithmetic of pooling, resizing and region windows.

Each backend keeps only what needs its arrays (dtype checks read off its dtypes, the computation).
The semantics these encode are written out in ``docs/semantics.md``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Literal, NamedTuple

import numpy as np

REDUCTIONS = ("mean", "sum", "none")
Reduction = Literal["mean", "sum", "none"]
DOWNSAMPLING_METHODS = ("max", "avg", "region-extraction")
DownsamplingMethod = Literal["max", "avg", "region-extraction"]

# The reference adds this inside the log of each Cholesky diagonal entry ("log trace" route).
CHOLESKY_LOG_OFFSET = 1e-8

# Label maps (the paper authors' semantics): what each ``rmi_pool_way`` does, the dense
# semantics' name for the two poolings, and the two ways lambda weighs the terms.
POOL_WAYS = {0: "max pooling", 1: "average pooling", 2: "interpolation"}
_POOLING_METHODS = {0: "max", 1: "avg"}
LAMBDA_WAYS = {0: "BCE + lambda * RMI", 1: "lambda * BCE + (1 - lambda) * RMI"}
# The authors' code adds this to every probability (an offset, not a clamp) and fixes epsilon.
PROBABILITY_OFFSET = 1e-6
LABEL_EPSILON = 5e-4
# ignore_index may be any label value, negative ones included (labels are at most int64).
SMALLEST_LABEL = -(2**63)


class LossTerms(NamedTuple):
    """The loss and its two terms, each reduced like the loss (``return_terms=True``).

    ``total`` is what the loss returns otherwise; ``bce`` and ``rmi`` are the unweighted BCE and
    RMI terms, so ``total = w_bce * bce + w_rmi * rmi`` with the call's weights.
    """

    total: Any
    bce: Any
    rmi: Any


# --- Python-valued options ------------------------------------------------------------------


def is_array(value: object) -> bool:
    """An array of any library (a JAX array or tracer, a NumPy array, a torch tensor)."""
    return hasattr(value, "shape") and hasattr(value, "dtype")


def _type_error(name: str, value: object, expected: str) -> TypeError:
    """``name`` got ``value`` where ``expected`` (e.g. "a bool") belongs.

    An array in its place is most often a JAX tracer: the option was passed through ``jax.jit``
    as an argument. Options like this set the structure of the computation, so the message
    shows the two ways to keep them Python values.
    """
    if is_array(value):
        return TypeError(
            f"{name} must be a Python value ({expected}), got an array "
            f"({type(value).__name__}): it fixes the structure of the computation, so it cannot "
            f"be traced. If it came through jax.jit as an argument, close over it instead (a "
            f"lambda, or functools.partial(..., {name}=...)) or mark it static "
            f"(jax.jit(f, static_argnames=({name!r},)))"
        )
    return TypeError(f"{name} must be {expected}, got {value!r} of type {type(value).__name__}")


def require_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise _type_error(name, value, "a bool")


def require_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _type_error(name, value, "an int")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def require_real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _type_error(name, value, "a Python number")
    return float(value)


def require_choice(name: str, value: object, choices: dict[int, str]) -> None:
    require_int(name, value, min(choices))
    if value not in choices:
        listed = ", ".join(f"{key} ({meaning})" for key, meaning in choices.items())
        raise ValueError(f"{name} must be one of {listed}, got {value}")


def require_unit_interval(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def check_weight(name: str, value: object) -> None:
    """A term weight: a Python number in [0, 1], or a 0-d array.

    An array weight may change from call to call without retracing (a schedule inside a jitted
    train step); its value is not checked, since under ``jit`` it is not known.
    """
    if is_array(value):
        if tuple(value.shape) != ():
            raise ValueError(
                f"{name} must be a number in [0, 1] or a 0-d array, got an array of shape "
                f"{tuple(value.shape)}"
            )
        return
    require_unit_interval(name, require_real(name, value))


def terms_to_compute(bce_weight: object, rmi_weight: object, return_terms: bool):
    """Whether to compute the BCE and the RMI term: a term is skipped only when its weight is a
    Python zero and the terms were not asked for."""

    def skipped(weight: object) -> bool:
        return not is_array(weight) and weight == 0

    return return_terms or not skipped(bce_weight), return_terms or not skipped(rmi_weight)


def combine_terms(bce_weight, bce, rmi_weight, rmi, flags, *, reduction, return_terms):
    """The loss from its terms (``None`` where not computed), for any array library.

    ``bce_weight * bce + rmi_weight * rmi``, made NaN wherever ``flags`` is not finite
    (``0 * inf`` and ``0 * NaN`` are NaN: the flags mark non-finite inputs), then reduced; with
    ``return_terms`` a ``LossTerms`` of the total and the two terms, each reduced alike.
    """
    parts = [w * term for w, term in ((bce_weight, bce), (rmi_weight, rmi)) if term is not None]
    total = sum(parts[1:], parts[0]) + 0 * flags
    if return_terms:
        return LossTerms(*(reduce_loss(term, reduction) for term in (total, bce, rmi)))
    return reduce_loss(total, reduction)


def call_options(call_locals: dict[str, Any], arrays: tuple[str, ...]) -> dict[str, Any]:
    """The options of a loss call, from the ``locals()`` taken first thing in its body: every
    argument but the ``arrays`` (and ``self``), so one dict can be checked and passed on."""
    skip = {*arrays, "self", "__class__"}
    return {name: value for name, value in call_locals.items() if name not in skip}


def reduce_loss(per_example, reduction: str):
    """``"mean"`` or ``"sum"`` over the batch axis, or ``"none"``: any array library's arrays."""
    if reduction == "mean":
        return per_example.mean()
    if reduction == "sum":
        return per_example.sum()
    if reduction == "none":
        return per_example
    raise ValueError(f"Unsupported reduction: {reduction}")


def check_dense_options(
    *,
    with_logits: object,
    radius: object,
    bce_weight: object,
    downsampling_method: object,
    stride: object,
    use_log_trace: object,
    use_double_precision: object,
    epsilon: object,
    reduction: object,
    return_terms: object,
) -> None:
    """Check the Python-valued options of ``rmi_loss`` (both backends, and ``RMILoss``)."""
    require_bool("with_logits", with_logits)
    require_bool("return_terms", return_terms)
    require_bool("use_log_trace", use_log_trace)
    require_bool("use_double_precision", use_double_precision)
    require_int("radius", radius, 1)
    require_int("stride", stride, 1)
    if downsampling_method not in DOWNSAMPLING_METHODS:
        raise ValueError(
            f"downsampling_method must be one of {DOWNSAMPLING_METHODS}, "
            f"got {downsampling_method!r}"
        )
    check_weight("bce_weight", bce_weight)
    eps = require_real("epsilon", epsilon)
    if not 0.0 < eps < float("inf"):
        raise ValueError(f"epsilon must be a positive finite number, got {epsilon}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"Unsupported reduction: {reduction!r}; expected one of {REDUCTIONS}")


def check_label_options(
    *,
    num_classes: object,
    rmi_radius: object,
    rmi_pool_way: object,
    rmi_pool_size: object,
    rmi_pool_stride: object,
    loss_weight_lambda: object,
    lambda_way: object,
    ignore_index: object,
    use_double_precision: object,
    exclude_ignored: object,
    return_terms: object,
) -> None:
    """Check the Python-valued options of ``rmi_loss_from_labels`` (and ``LabelRMILoss``)."""
    require_int("num_classes", num_classes, 1)
    require_int("rmi_radius", rmi_radius, 1)
    require_choice("rmi_pool_way", rmi_pool_way, POOL_WAYS)
    require_int("rmi_pool_size", rmi_pool_size, 1)
    require_int("rmi_pool_stride", rmi_pool_stride, 1)
    if rmi_pool_size != rmi_pool_stride:
        raise ValueError(
            f"rmi_pool_size must equal rmi_pool_stride (the pooling kernel is the stride), got "
            f"rmi_pool_size={rmi_pool_size} and rmi_pool_stride={rmi_pool_stride}"
        )
    check_weight("loss_weight_lambda", loss_weight_lambda)
    require_choice("lambda_way", lambda_way, LAMBDA_WAYS)
    require_int("ignore_index", ignore_index, SMALLEST_LABEL)
    require_bool("use_double_precision", use_double_precision)
    require_bool("exclude_ignored", exclude_ignored)
    require_bool("return_terms", return_terms)


def label_term_weights(loss_weight_lambda, lambda_way: int):
    """Weights of the BCE and RMI terms: ``(l, 1 - l)`` for ``lambda_way=1``, else ``(1, l)``."""
    if lambda_way == 1:
        return loss_weight_lambda, 1.0 - loss_weight_lambda
    return 1.0, loss_weight_lambda


def label_rmi_term(
    windows, statistics, probabilities, target, valid, *, radius, pool_way, stride, dtype
):
    """The label-map RMI term: per class the batch mean of ``0.5 logdet(M + eps I) / d``,
    summed over classes (docs/semantics.md#label-maps, steps 5-7).

    The steps are the backend's: ``windows`` and ``statistics`` are its ``_windows`` and
    ``_statistics`` modules. ``probabilities`` and ``target`` are ``[N, C, H, W]`` at full
    resolution; the statistics run in ``dtype``. ``valid``: ``None`` (every window counts) or
    the ``[N, H, W]`` mask whose invalid pixels' windows leave (``exclude_ignored``).
    """
    # rmi_pool_way=2 resizes, after which no pooling is left to do (stride 1: any method).
    method = _POOLING_METHODS.get(pool_way, "max")
    if pool_way == 2 and stride > 1:
        size = (probabilities.shape[2] // stride, probabilities.shape[3] // stride)
        probabilities = windows.resize_bilinear_corners(probabilities, size)
        target = windows.resize_nearest(target, size)
        valid = None if valid is None else windows.resize_validity(valid, size)
        stride = 1
    mask = None
    if valid is not None:
        name = "labels (with exclude_ignored=True)"
        mask = windows.masked_window_weights(
            valid, name, radius=radius, method=method, stride=stride, dtype=dtype
        )
    maps = (windows.downsample(m, method, stride) for m in (probabilities, target))
    step, offset = window_step(method, stride), CHOLESKY_LOG_OFFSET
    per_class = statistics.lower_bound(
        *maps, mask, radius=radius, step=step, epsilon=LABEL_EPSILON, offset=offset, dtype=dtype
    )
    return per_class.mean(0).sum()


# --- Size arithmetic ------------------------------------------------------------------------


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
    # At least one pixel: with radius 1 and an even stride the padding alone makes one cell.
    return max(1, radius * stride - 2 * (stride // 2))


def window_grid(height: int, width: int, radius: int, step: int) -> tuple[int, int]:
    """Rows and columns of ``radius x radius`` windows at spacing ``step`` inside a map."""
    return (height - radius) // step + 1, (width - radius) // step + 1


# Windows per map from which float64 statistics come from lag products rather than region
# vectors (docs/computation.md#lag-products). A lag-product program has a few thousand small
# operations whatever the map's size, so it compiles in about 6-7 s against 1.2 s, and below
# this size the region vectors also run faster: on the 2-core AMD EPYC host, value and gradient
# of 32 maps took 2.4 ms (region vectors) against 3.7 ms (lag products) at 26x26 windows, and
# 4.7 ms against 3.1 ms at 30x30.
LAG_PRODUCTS_MIN_WINDOWS = 28 * 28


def uses_lag_products(height: int, width: int, radius: int, step: int, weighted: bool) -> bool:
    """Whether the float64 statistics of ``height x width`` maps come from lag products: windows
    at spacing 1, without weights, and at least :data:`LAG_PRODUCTS_MIN_WINDOWS` of them."""
    if weighted or step != 1:
        return False
    return math.prod(window_grid(height, width, radius, step)) >= LAG_PRODUCTS_MIN_WINDOWS


# --- The statistics' numerics: shared so that both backends round alike ------------------------

# Bytes of region vectors one chunk of the statistics may hold, by platform. On a CPU a chunk
# that fits a core's cache is fastest; an accelerator takes every map at once (one large batch
# beats many small kernels) unless they pass this budget, then a few large chunks. 512 MB holds
# the region vectors of 8x21x512x512 float32 inputs at stride 3 (345 MB) in one batch.
CHUNK_BYTES = {"cpu": 2 << 20, "accelerator": 512 << 20}

# Pass one of the Cholesky QR factors J + shift I, with shift = (units) * u * trace(J): u the
# unit roundoff of the statistics' dtype. The Cholesky factorisation itself needs about one unit
# per row of J (k = 2d rows); the Gram matrix Z Z^T rounds like a sum of L products, about
# sqrt(L) units (measured: 0.7 sqrt(L) in a float64 Gram whose product was split across two
# threads, enough to fail at shift = k units and epsilon = 1e-9), so it gets twice that.
SHIFT_UNITS_PER_ROW = 1.0
SHIFT_UNITS_PER_SQRT_WINDOW = 2.0


def shift_units(rows: int, windows: int) -> float:
    """Pass one's shift in units of ``u * trace(J)`` for a ``rows x windows`` region matrix."""
    return SHIFT_UNITS_PER_ROW * rows + SHIFT_UNITS_PER_SQRT_WINDOW * math.sqrt(windows)


def minimum_epsilon(radius: int, windows: int, unit_roundoff: float) -> float:
    """The smallest ``epsilon`` the two-pass factorisation serves in a dtype of ``unit_roundoff``.

    Pass two factors a Gram matrix whose smallest eigenvalue is about ``epsilon / shift``; below
    one unit roundoff it is rounding noise and the factorisation can fail. With values in [0, 1]
    each centred row of the region matrix has squared norm at most ``windows / 4``, so
    ``trace(J) <= k windows / 4`` bounds the shift, and this bound on ``epsilon`` follows.
    """
    rows = 2 * radius * radius
    largest_trace = rows * windows / 4
    return unit_roundoff**2 * shift_units(rows, windows) * largest_trace


def check_epsilon(
    epsilon: float, *, radius: int, grid: tuple[int, int], unit_roundoff: float, dtype_name: str
) -> None:
    """``epsilon`` at least :func:`minimum_epsilon` for a ``grid`` of region windows."""
    windows = grid[0] * grid[1]
    smallest = minimum_epsilon(radius, windows, unit_roundoff)
    if epsilon < smallest:
        raise ValueError(
            f"epsilon={epsilon:g} is below {smallest:.2g}, the smallest ridge that {dtype_name} "
            f"statistics resolve for {grid[0]}x{grid[1]} windows of radius {radius}: the "
            f"region data are rounded to a larger size than sqrt(epsilon), so the "
            f"factorisation could fail; use a larger epsilon, or float64 statistics "
            f"(use_double_precision=True), which resolve much smaller ones"
        )


def maps_per_chunk(num_maps: int, num_windows: int, radius: int, itemsize: int, budget: int) -> int:
    """How many region matrices one chunk of the statistics takes: as many as keep its region
    vectors (``2 radius**2 x num_windows`` entries of ``itemsize`` bytes each) within ``budget``
    bytes, at least one and at most ``num_maps``."""
    per_map = 2 * radius * radius * num_windows * itemsize
    return max(1, min(num_maps, budget // per_map))


def dense_window_grid(height: int, width: int, radius: int, method: str, stride: int):
    """Rows and columns of region windows of a dense-target map of ``height x width`` pixels."""
    sizes = (map_size_after_downsampling(n, method, stride) for n in (height, width))
    return window_grid(*sizes, radius, window_step(method, stride))


def label_window_grid(height: int, width: int, radius: int, pool_way: int, stride: int):
    """Rows and columns of region windows of a label map of ``height x width`` pixels."""
    sizes = (label_map_size(n, pool_way, stride) for n in (height, width))
    return window_grid(*sizes, radius, 1)


def label_map_size(size: int, pool_way: int, stride: int) -> int:
    """Length of one spatial axis after the label-map downsampling."""
    if pool_way == 2 and stride > 1:
        return size // stride
    return map_size_after_downsampling(size, "max", stride)


def minimum_label_input_size(radius: int, pool_way: int, stride: int) -> int:
    """Smallest input length per axis that leaves room for one region after downsampling."""
    if pool_way == 2 and stride > 1:
        return radius * stride
    return minimum_input_size(radius, "max", stride)


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


# --- Shapes ---------------------------------------------------------------------------------


def channels_first_shape(name: str, shape: tuple[int, ...], channel_axis: object) -> tuple:
    """``shape`` with its ``channel_axis`` moved to position 1 (``[N, C, H, W]``).

    The batch is axis 0 in every layout, so the classes may sit on any other axis.
    """
    if isinstance(channel_axis, bool) or not isinstance(channel_axis, numbers.Integral):
        raise _type_error("channel_axis", channel_axis, "an int")
    if not -4 < channel_axis < 4 or channel_axis == 0:
        raise ValueError(
            f"channel_axis must be one of 1, 2, 3, -1, -2, -3 for rank-4 {name} (axis 0 is the "
            f"batch; -1 is NHWC, 1 is NCHW), got {channel_axis}"
        )
    axis = channel_axis % len(shape)
    rest = [size for i, size in enumerate(shape) if i != axis]
    return (rest[0], shape[axis], *rest[1:])


def check_rank(name: str, shape: tuple[int, ...], layouts: str) -> None:
    if len(shape) != 4:
        raise ValueError(f"{name} must have rank 4 ({layouts}), got shape {tuple(shape)}")


def check_floating(name: str, is_floating: bool, dtype_name: str) -> None:
    if not is_floating:
        raise TypeError(f"{name} must have a floating dtype, got {dtype_name}")


def check_dense_shapes(
    name: str,
    nchw: tuple[int, ...],
    shape: tuple[int, ...],
    target_shape: tuple[int, ...],
    *,
    radius: int,
    method: str,
    stride: int,
) -> None:
    """Target shape, a non-empty batch and class axis, and room for one region.

    ``name`` is the prediction's argument name, ``shape`` its shape as given and ``nchw`` the
    same in ``[N, C, H, W]`` order.
    """
    if tuple(target_shape) != tuple(shape):
        raise ValueError(
            f"target must have the shape of {name} {tuple(shape)}, got shape {tuple(target_shape)}"
        )
    if nchw[0] == 0 or nchw[1] == 0:
        raise ValueError(
            f"{name} must have at least one example and one class, got shape {tuple(shape)}"
        )
    height, width = nchw[2:]
    map_h = map_size_after_downsampling(height, method, stride)
    map_w = map_size_after_downsampling(width, method, stride)
    how = f"downsampling_method={method!r} with stride={stride}"
    minimum = minimum_input_size(radius, method, stride)
    _check_regions_fit(f"{name}'s", (height, width), (map_h, map_w), radius, how, minimum)


def check_mask_shape(
    name: str, mask_shape: tuple[int, ...], shape: tuple[int, ...], channel_axis: int
) -> None:
    """``valid_mask`` has the shape of the prediction ``name`` (``shape``) without its classes."""
    axis = channel_axis % len(shape)
    expected = tuple(size for i, size in enumerate(shape) if i != axis)
    if tuple(mask_shape) != expected:
        raise ValueError(
            f"valid_mask must have the shape of {name} without its channel axis {expected} "
            f"({name} {tuple(shape)}, channel_axis={channel_axis}), got shape {tuple(mask_shape)}"
        )


def check_label_shapes(
    nchw: tuple[int, ...],
    shape: tuple[int, ...],
    labels_shape: tuple[int, ...],
    *,
    num_classes: int,
    channel_axis: int,
    radius: int,
    pool_way: int,
    stride: int,
) -> None:
    """Label-map shapes against the logits (``shape`` as given, ``nchw`` in NCHW order)."""
    batch, classes, height, width = nchw
    if tuple(labels_shape) != (batch, height, width):
        raise ValueError(
            f"labels must have shape [N, H, W] = {(batch, height, width)} to match logits of "
            f"shape {tuple(shape)}, got shape {tuple(labels_shape)}"
        )
    if batch == 0:
        raise ValueError(f"logits must have at least one example, got shape {tuple(shape)}")
    if classes != num_classes:
        raise ValueError(
            f"num_classes={num_classes} must equal the number of channels of logits, got "
            f"{classes} channels on channel_axis={channel_axis} (shape {tuple(shape)})"
        )
    map_h = label_map_size(height, pool_way, stride)
    map_w = label_map_size(width, pool_way, stride)
    how = f"rmi_pool_way={pool_way} ({POOL_WAYS[pool_way]}) with rmi_pool_stride={stride}"
    minimum = minimum_label_input_size(radius, pool_way, stride)
    _check_regions_fit("logits'", (height, width), (map_h, map_w), radius, how, minimum, "rmi_")


def _check_regions_fit(owner, size, map_size, radius, how, minimum, prefix="") -> None:
    """Raise unless a ``radius x radius`` region fits in the downsampled ``map_size``: ``size``
    is the input's, ``owner`` the argument's name, ``how`` the downsampling, ``minimum`` the
    smallest input size, ``prefix`` that of the radius option's name."""
    radius_name = f"{prefix}radius"
    if min(map_size) >= radius and min(size) >= minimum:
        return
    if min(map_size) < radius:
        why = (
            f"becomes {map_size[0]}x{map_size[1]} after {how}, smaller than "
            f"{radius_name}={radius}: no region fits"
        )
    else:  # an empty axis that the padding alone would turn into a cell
        why = f"is empty ({how}): no region fits"
    raise ValueError(
        f"{owner} spatial size {size[0]}x{size[1]} {why}; spatial size must be at least "
        f"{minimum}x{minimum} for these options"
    )


def empty_window_error(name: str, examples: list[int], *, radius: int, method: str, stride: int):
    """The error for a mask that leaves ``examples`` without a single whole region window."""
    return ValueError(
        f"{name} leaves example(s) {examples} without a region window: every "
        f"{radius}x{radius} window of the downsampled map (downsampling_method="
        f"{method!r}, stride={stride}) touches a masked pixel; each example needs at "
        f"least one window of valid pixels"
    )
