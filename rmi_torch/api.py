"""Public PyTorch API: functional ``rmi_loss``, the ``RMILoss`` module, and their validation."""

from __future__ import annotations

import numbers
from typing import Literal

import torch
from torch import nn

from rmi_torch._bce import bce_term
from rmi_torch._statistics import region_log_det
from rmi_torch._windows import (
    DOWNSAMPLING_METHODS,
    downsample,
    downsample_validity,
    map_size_after_downsampling,
    minimum_input_size,
    window_step,
    window_weights,
)

REDUCTIONS = ("mean", "sum", "none")
Reduction = Literal["mean", "sum", "none"]
DownsamplingMethod = Literal["max", "avg", "region-extraction"]

# The reference adds this inside the log of each Cholesky diagonal entry ("log trace" route).
CHOLESKY_LOG_OFFSET = 1e-8


def rmi_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    with_logits: bool,
    radius: int = 3,
    bce_weight: float = 0.5,
    downsampling_method: DownsamplingMethod = "max",
    stride: int = 3,
    use_log_trace: bool = True,
    use_double_precision: bool = True,
    epsilon: float = 5e-4,
    reduction: Reduction = "mean",
    valid_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Region Mutual Information loss (Zhao et al., 2019) with a weighted BCE term.

    For each example :math:`n` and class :math:`c`, with :math:`P`, :math:`Y` the
    :math:`d \times L` centred :math:`R \times R` region vectors (:math:`d = R^2`) of the
    downsampled probabilities and target,
    :math:`M = Y Y^\top - Y P^\top (P P^\top + \epsilon I)^{-1} P Y^\top` and
    :math:`\ell_{nc} = \log\det(M + \epsilon I) / (2d)`. The per-example loss is
    :math:`(1 - w) \sum_c \ell_{nc} + w \cdot \mathrm{mean}(\mathrm{BCE})`, as in the
    ``rmi-pytorch`` package's ``RMILoss``; it can be negative.

    The log-determinant comes from a QR factorisation of the centred data with
    :math:`\sqrt{\epsilon} I` rows appended (never from squared data), so the float32 route is
    accurate and cannot fail; its backward pass is closed-form.

    Args:
      input: logits (``with_logits=True``) or probabilities, ``[N, C, H, W]``, floating dtype.
      target: same shape; binary or soft per-class targets in ``[0, 1]``.
      with_logits: apply a sigmoid to ``input`` (and use BCE with logits).
      radius: side ``R`` of the square regions.
      bce_weight: weight ``w`` in ``[0, 1]`` of the BCE term; ``1 - w`` weights the RMI term.
      downsampling_method: ``"max"`` or ``"avg"`` pooling (kernel = stride, padding
        ``stride // 2``), or ``"region-extraction"`` (regions every ``stride`` pixels).
      stride: downsampling factor; 1 disables downsampling.
      use_log_trace: log-determinant as ``2 sum(log(diag(chol) + 1e-8))`` (the reference's
        default); ``False`` gives the plain log-determinant.
      use_double_precision: compute the statistics in float64 (float64 inputs always are).
      epsilon: the ridge added to both covariance matrices.
      reduction: ``"mean"`` over the batch, ``"sum"``, or ``"none"``.
      valid_mask: optional boolean ``[N, H, W]`` mask; ``False`` marks pixels to leave out
        (unlabelled, padding). Masked pixels leave the BCE mean, and every region window
        touching one (after downsampling, a pooled cell is masked if any pixel under it is)
        leaves the statistics: centring and covariances use the remaining windows only. Their
        values never matter. An example without a window of valid pixels is a ``ValueError``.

    Returns:
      A scalar for ``"mean"``/``"sum"``, ``[N]`` for ``"none"``; float64 when the statistics
      run in float64, else float32.

    Example:
      >>> import torch
      >>> from rmi_torch import rmi_loss
      >>> logits = torch.randn(2, 3, 32, 32, requires_grad=True)
      >>> target = torch.randint(0, 2, (2, 3, 32, 32)).float()
      >>> rmi_loss(logits, target, with_logits=True).backward()

    References:
      Zhao, Cai, Xu, Yang, He. "Region Mutual Information Loss for Semantic Segmentation",
      NeurIPS 2019. https://arxiv.org/abs/1910.12037
    """
    _validate_options(
        with_logits=with_logits,
        radius=radius,
        bce_weight=bce_weight,
        downsampling_method=downsampling_method,
        stride=stride,
        use_log_trace=use_log_trace,
        use_double_precision=use_double_precision,
        epsilon=epsilon,
        reduction=reduction,
    )
    _validate_tensors(input, target, radius=radius, method=downsampling_method, stride=stride)
    if valid_mask is not None:
        _validate_mask(valid_mask, input.shape)
    # Elementwise work (BCE, sigmoid, pooling) in the input precision but at least float32, as the
    # reference does; statistics in float32 unless float64 was asked for or given.
    work_dtype = torch.promote_types(input.dtype, torch.float32)
    stats_dtype = torch.float64 if use_double_precision else work_dtype
    input, target = input.to(work_dtype), target.to(work_dtype)
    pixel_mask = window_mask = None
    if valid_mask is not None:
        pixel_mask = valid_mask.unsqueeze(1)  # broadcasts against input
        # Masked values must not matter, not even as NaN times a zero weight.
        input = torch.where(pixel_mask, input, 0.0)
        target = torch.where(pixel_mask, target, 0.0)
        window_mask = masked_window_weights(
            valid_mask,
            "valid_mask",
            radius=radius,
            method=downsampling_method,
            stride=stride,
            dtype=stats_dtype,
        )

    per_example = torch.zeros(input.shape[0], dtype=stats_dtype, device=input.device)
    # The sigmoid is increasing, so it commutes with max pooling: pooling the logits first
    # applies it to a stride**2 times smaller map and keeps no full-size copy for autograd.
    pool_logits = with_logits and downsampling_method == "max" and stride > 1
    pooled_logits = None
    if bce_weight != 0:
        # The BCE term pools the logits for the RMI term in passing (one full-size backward).
        bce, pooled_logits = bce_term(
            input,
            target,
            with_logits,
            reduction == "none",
            pixel_mask,
            pool_stride=stride if pool_logits and bce_weight != 1 else 0,
        )
        per_example = per_example + bce_weight * bce  # a scalar broadcasts for "mean" and "sum"
    if bce_weight != 1:
        if pooled_logits is not None:
            p_maps = torch.sigmoid(pooled_logits)
        elif with_logits and downsampling_method == "max":
            p_maps = torch.sigmoid(downsample(input, downsampling_method, stride))
        else:
            probabilities = torch.sigmoid(input) if with_logits else input
            p_maps = downsample(probabilities, downsampling_method, stride)
        lower_bound = _lower_bound_of_maps(
            p_maps,
            downsample(target, downsampling_method, stride),
            radius=radius,
            step=window_step(downsampling_method, stride),
            offset=CHOLESKY_LOG_OFFSET if use_log_trace else 0.0,
            epsilon=epsilon,
            dtype=stats_dtype,
            window_weights=window_mask,
        )
        per_example = per_example + (1.0 - bce_weight) * lower_bound.sum(dim=1)
    return _reduce(per_example, reduction)


class RMILoss(nn.Module):
    """Region Mutual Information loss as a module: a drop-in for ``rmi.RMILoss``.

    Same constructor (positional order, names, defaults) as the ``rmi-pytorch`` package, plus
    ``reduction``. ``forward(input, target, valid_mask=None)`` takes NCHW tensors; see
    :func:`rmi_loss`.

    Example:
      >>> import torch
      >>> from rmi_torch import RMILoss
      >>> loss = RMILoss(with_logits=True)
      >>> pred = torch.randn(5, 4, 64, 64, requires_grad=True)
      >>> target = torch.empty(5, 4, 64, 64).random_(2)
      >>> loss(pred, target).backward()
    """

    def __init__(
        self,
        with_logits: bool,
        radius: int = 3,
        bce_weight: float = 0.5,
        downsampling_method: DownsamplingMethod = "max",
        stride: int = 3,
        use_log_trace: bool = True,
        use_double_precision: bool = True,
        epsilon: float = 0.0005,
        reduction: Reduction = "mean",
    ) -> None:
        super().__init__()
        _validate_options(
            with_logits=with_logits,
            radius=radius,
            bce_weight=bce_weight,
            downsampling_method=downsampling_method,
            stride=stride,
            use_log_trace=use_log_trace,
            use_double_precision=use_double_precision,
            epsilon=epsilon,
            reduction=reduction,
        )
        self.with_logits = with_logits
        self.radius = radius
        self.bce_weight = bce_weight
        self.downsampling_method = downsampling_method
        self.stride = stride
        self.use_log_trace = use_log_trace
        self.use_double_precision = use_double_precision
        self.epsilon = epsilon
        self.reduction = reduction

    def forward(
        self, input: torch.Tensor, target: torch.Tensor, valid_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The loss of ``input`` against ``target``, optionally over ``valid_mask`` pixels only."""
        return rmi_loss(
            input,
            target,
            valid_mask=valid_mask,
            with_logits=self.with_logits,
            radius=self.radius,
            bce_weight=self.bce_weight,
            downsampling_method=self.downsampling_method,
            stride=self.stride,
            use_log_trace=self.use_log_trace,
            use_double_precision=self.use_double_precision,
            epsilon=self.epsilon,
            reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        return (
            f"with_logits={self.with_logits}, radius={self.radius}, "
            f"bce_weight={self.bce_weight}, downsampling_method={self.downsampling_method!r}, "
            f"stride={self.stride}, use_log_trace={self.use_log_trace}, "
            f"use_double_precision={self.use_double_precision}, epsilon={self.epsilon}, "
            f"reduction={self.reduction!r}"
        )


def _rmi_lower_bound(
    probabilities: torch.Tensor,
    target: torch.Tensor,
    *,
    radius: int,
    downsampling_method: str,
    stride: int,
    offset: float,
    epsilon: float,
    dtype: torch.dtype,
    window_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """``0.5 logdet(M + eps I) / d`` per example and class, ``[N, C, H, W] -> [N, C]``."""
    return _lower_bound_of_maps(
        downsample(probabilities, downsampling_method, stride),
        downsample(target, downsampling_method, stride),
        radius=radius,
        step=window_step(downsampling_method, stride),
        offset=offset,
        epsilon=epsilon,
        dtype=dtype,
        window_weights=window_weights,
    )


def _lower_bound_of_maps(
    p_maps: torch.Tensor,
    y_maps: torch.Tensor,
    *,
    radius: int,
    step: int,
    offset: float,
    epsilon: float,
    dtype: torch.dtype,
    window_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """The lower bound from already downsampled maps, windows every ``step`` pixels.

    ``window_weights``: ``None`` or ``[N, L]`` 0/1 weights of the windows, shared by the classes.
    Autocast is switched off here: it would run the matrix products in bfloat16 or float16,
    which cannot carry the ``eps``-sized signal; the statistics stay in ``dtype``.
    """
    with torch.autocast(p_maps.device.type, enabled=False):
        return _lower_bound_in_dtype(
            p_maps, y_maps, radius, step, offset, epsilon, dtype, window_weights
        )


def _lower_bound_in_dtype(
    p_maps, y_maps, radius, step, offset, epsilon, dtype, window_weights
) -> torch.Tensor:
    # 0.5 * logdet = sum(log(diag(chol))), so the 0.5 and the 2 of the reference cancel.
    log_det = region_log_det(
        p_maps,
        y_maps,
        window_weights,
        radius=radius,
        step=step,
        epsilon=epsilon,
        offset=offset,
        dtype=dtype,
    )
    return log_det / (radius * radius)


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
        raise ValueError(
            f"{name} leaves example(s) {empty.tolist()} without a region window: every "
            f"{radius}x{radius} window of the downsampled map (downsampling_method="
            f"{method!r}, stride={stride}) touches a masked pixel; each example needs at "
            f"least one window of valid pixels"
        )
    return weights


def _reduce(per_example: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_example.mean()
    if reduction == "sum":
        return per_example.sum()
    if reduction == "none":
        return per_example
    raise ValueError(f"Unsupported reduction: {reduction}")


def _require_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r} of type {type(value).__name__}")


def _require_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r} of type {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _require_real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a Python number, got {value!r} of type {type(value).__name__}"
        )
    return float(value)


def _validate_options(
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
) -> None:
    """Check the Python-valued options (also run by ``RMILoss.__init__``)."""
    _require_bool("with_logits", with_logits)
    _require_bool("use_log_trace", use_log_trace)
    _require_bool("use_double_precision", use_double_precision)
    _require_int("radius", radius, 1)
    _require_int("stride", stride, 1)
    if downsampling_method not in DOWNSAMPLING_METHODS:
        raise ValueError(
            f"downsampling_method must be one of {DOWNSAMPLING_METHODS}, "
            f"got {downsampling_method!r}"
        )
    weight = _require_real("bce_weight", bce_weight)
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"bce_weight must be in [0, 1], got {bce_weight}")
    eps = _require_real("epsilon", epsilon)
    if not 0.0 < eps < float("inf"):
        raise ValueError(f"epsilon must be a positive finite number, got {epsilon}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"Unsupported reduction: {reduction!r}; expected one of {REDUCTIONS}")


def _dtype_name(dtype: torch.dtype) -> str:
    """``"float32"`` rather than ``"torch.float32"``: the messages read as in the JAX backend."""
    return str(dtype).removeprefix("torch.")


def _validate_mask(mask: object, input_shape: torch.Size) -> None:
    """``valid_mask`` must be a boolean tensor with the shape of ``input`` minus its channels."""
    expected = (input_shape[0], *input_shape[2:])
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"valid_mask must be a torch.Tensor, got {type(mask).__name__}")
    if tuple(mask.shape) != expected:
        raise ValueError(
            f"valid_mask must have the shape of input without its channel axis {expected} "
            f"(input {tuple(input_shape)}), got shape {tuple(mask.shape)}"
        )
    if mask.dtype != torch.bool:
        raise TypeError(f"valid_mask must have dtype bool, got {_dtype_name(mask.dtype)}")


def check_prediction(name: str, x: object) -> None:
    """A tensor of rank 4 (NCHW) with a floating dtype."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must have rank 4 ([N, C, H, W]), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {_dtype_name(x.dtype)}")


def _validate_tensors(
    input: object, target: object, *, radius: int, method: str, stride: int
) -> None:
    """Check ranks, shapes, dtypes and that a region fits after downsampling."""
    check_prediction("input", input)
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if target.shape != input.shape:
        raise ValueError(
            f"target must have the shape of input {tuple(input.shape)}, "
            f"got shape {tuple(target.shape)}"
        )
    if target.is_complex():
        raise TypeError(
            f"target must have a floating, integer or bool dtype, got {_dtype_name(target.dtype)}"
        )
    if input.shape[0] == 0 or input.shape[1] == 0:
        raise ValueError(
            f"input must have at least one example and one class, got shape {tuple(input.shape)}"
        )
    height, width = input.shape[2:]
    map_h = map_size_after_downsampling(height, method, stride)
    map_w = map_size_after_downsampling(width, method, stride)
    if min(map_h, map_w) < radius:
        minimum = minimum_input_size(radius, method, stride)
        raise ValueError(
            f"input's spatial size {height}x{width} becomes {map_h}x{map_w} after "
            f"downsampling_method={method!r} with stride={stride}, smaller than "
            f"radius={radius}: no region fits; spatial size must be at least "
            f"{minimum}x{minimum} for these options"
        )
