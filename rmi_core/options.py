"""The options of both backends that need no array library: their values and defaults, their
checks with the messages users see, and the per-axis form of the spatial options.

The other shared concerns have modules of their own: ``rmi_core.geometry`` (the size arithmetic
of pooling, resizing and windows, for any spatial rank), ``rmi_core.shapes`` (checks of array
shapes), ``rmi_core.numerics`` (the statistics' shift, smallest epsilon, chunk sizes and route),
``rmi_core.terms`` (the loss from its terms) and ``rmi_core.labels`` (the label-map term). Each
backend keeps only what needs its arrays. The semantics are written out in ``docs/semantics.md``.
"""

from __future__ import annotations

import numbers
from typing import Any, Literal

REDUCTIONS = ("mean", "sum", "none")
Reduction = Literal["mean", "sum", "none"]
DOWNSAMPLING_METHODS = ("max", "avg", "region-extraction")
DownsamplingMethod = Literal["max", "avg", "region-extraction"]
# A spatial option: one int for every spatial axis, or one per axis ((D,) H, W order).
SpatialOption = int | tuple[int, ...]

# Label maps (the paper authors' semantics): what each ``rmi_pool_way`` does and the two ways
# lambda weighs the terms.
POOL_WAYS = {0: "max pooling", 1: "average pooling", 2: "interpolation"}
LAMBDA_WAYS = {0: "BCE + lambda * RMI", 1: "lambda * BCE + (1 - lambda) * RMI"}
# ignore_index may be any label value, negative ones included (labels are at most int64).
SMALLEST_LABEL = -(2**63)


# --- Python-valued options ------------------------------------------------------------------


def is_array(value: object) -> bool:
    """An array of any library (a JAX array or tracer, a NumPy array, a torch tensor)."""
    return hasattr(value, "shape") and hasattr(value, "dtype")


def type_error(name: str, value: object, expected: str) -> TypeError:
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
        raise type_error(name, value, "a bool")


def require_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise type_error(name, value, "an int")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def require_real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise type_error(name, value, "a Python number")
    return float(value)


def require_choice(name: str, value: object, choices: dict[int, str]) -> None:
    require_int(name, value, min(choices))
    if value not in choices:
        listed = ", ".join(f"{key} ({meaning})" for key, meaning in choices.items())
        raise ValueError(f"{name} must be one of {listed}, got {value}")


def require_sizes(name: str, value: object) -> None:
    """A spatial option: an int >= 1, or a non-empty tuple (or list) of them, one per axis."""
    if isinstance(value, (tuple, list)) and value:
        for entry in value:
            if isinstance(entry, bool) or not isinstance(entry, numbers.Integral):
                raise type_error(name, value, "an int or a tuple of ints, one per spatial axis")
            if entry < 1:
                raise ValueError(f"{name} must be >= 1 on every axis, got {tuple(value)}")
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise type_error(name, value, "an int or a tuple of ints, one per spatial axis")
    require_int(name, value, 1)


def per_axis(name: str, value: SpatialOption, rank: int) -> tuple[int, ...]:
    """A checked spatial option (:func:`require_sizes`) as one int per spatial axis: an int is
    the same on all ``rank`` axes, a tuple must have ``rank`` entries."""
    if not isinstance(value, (tuple, list)):
        return (int(value),) * rank
    if len(value) != rank:
        raise ValueError(
            f"{name} must be an int or a tuple of {rank} ints, one per spatial axis of these "
            f"{'images' if rank == 2 else 'volumes' if rank == 3 else 'maps'}, got {tuple(value)}"
        )
    return tuple(int(v) for v in value)


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


def call_options(call_locals: dict[str, Any], arrays: tuple[str, ...]) -> dict[str, Any]:
    """The options of a loss call, from the ``locals()`` taken first thing in its body: every
    argument but the ``arrays`` (and ``self``), so one dict can be checked and passed on."""
    skip = {*arrays, "self", "__class__"}
    return {name: value for name, value in call_locals.items() if name not in skip}


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
    require_sizes("radius", radius)
    require_sizes("stride", stride)
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
    require_sizes("rmi_radius", rmi_radius)
    require_choice("rmi_pool_way", rmi_pool_way, POOL_WAYS)
    require_sizes("rmi_pool_size", rmi_pool_size)
    require_sizes("rmi_pool_stride", rmi_pool_stride)
    if not _same_sizes(rmi_pool_size, rmi_pool_stride):
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


def _same_sizes(first: SpatialOption, second: SpatialOption) -> bool:
    """Two spatial options equal on every axis (an int stands for any number of axes)."""
    rank = max(len(v) if isinstance(v, (tuple, list)) else 1 for v in (first, second))
    as_tuple = [tuple(v) if isinstance(v, (tuple, list)) else (v,) * rank for v in (first, second)]
    return as_tuple[0] == as_tuple[1]
