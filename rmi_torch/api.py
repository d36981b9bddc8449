"""Public PyTorch API: functional ``rmi_loss``, the ``RMILoss`` module, and the checks of their
tensors."""

from __future__ import annotations

import torch
from torch import nn

from rmi_core.geometry import Sizes, dense_window_grid, window_step
from rmi_core.numerics import CHOLESKY_LOG_OFFSET, check_epsilon
from rmi_core.options import (
    DownsamplingMethod,
    Reduction,
    SpatialOption,
    call_options,
    check_dense_options,
    is_array,
    per_axis,
)
from rmi_core.shapes import check_dense_shapes, check_floating, check_mask_shape, check_rank
from rmi_core.terms import LossTerms, combine_terms, terms_to_compute
from rmi_torch._bce import bce_per_example
from rmi_torch._statistics import lower_bound
from rmi_torch._windows import downsample, masked_window_weights


def rmi_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    with_logits: bool,
    radius: SpatialOption = 3,
    bce_weight: float | torch.Tensor = 0.5,
    downsampling_method: DownsamplingMethod = "max",
    stride: SpatialOption = 3,
    use_log_trace: bool = True,
    use_double_precision: bool = True,
    epsilon: float = 5e-4,
    reduction: Reduction = "mean",
    valid_mask: torch.Tensor | None = None,
    return_terms: bool = False,
) -> torch.Tensor | LossTerms:
    r"""Region Mutual Information loss (Zhao et al., 2019) with a weighted BCE term.

    For each example :math:`n` and class :math:`c`, with :math:`P`, :math:`Y` the
    :math:`d \times L` centred :math:`R \times R` region vectors (:math:`d = R^2`) of the
    downsampled probabilities and target,
    :math:`M = Y Y^\top - Y P^\top (P P^\top + \epsilon I)^{-1} P Y^\top` and
    :math:`\ell_{nc} = \log\det(M + \epsilon I) / (2d)`. The per-example loss is
    :math:`(1 - w) \sum_c \ell_{nc} + w \cdot \mathrm{mean}(\mathrm{BCE})`, as in the
    ``rmi-pytorch`` package's ``RMILoss``; it can be negative.
    Volumes (rank 5) work alike, with :math:`R_d \times R_h \times R_w` boxes (``radius`` and
    ``stride`` may give one value per spatial axis, for images too; docs/semantics.md,
    "Volumes and per-axis regions").

    The log-determinant comes from a QR factorisation of the centred data with
    :math:`\sqrt{\epsilon} I` rows appended (never from squared data), its products in true
    float32 whatever ``torch.set_float32_matmul_precision`` says, so the float32 route is
    accurate; and for any ``epsilon`` it accepts (one too small for the dtype of the statistics
    is refused) it cannot fail. Its backward pass is closed-form. Any memory layout works
    (``channels_last``, transposed or strided views), with the same values and gradients.

    A NaN or an infinity in ``input`` or ``target`` (outside ``valid_mask``) makes the loss NaN;
    probabilities (``with_logits=False``) are clipped to ``[0, 1]`` first, so a rounding
    ``1 + 1e-6`` is harmless. See ``docs/semantics.md`` for the semantics in full.

    Args:
      input: logits (``with_logits=True``) or probabilities, images ``[N, C, H, W]`` or volumes
        ``[N, C, D, H, W]``, floating dtype.
      target: same shape; binary or soft per-class targets in ``[0, 1]``.
      with_logits: apply a sigmoid to ``input`` (and use BCE with logits).
      radius: side ``R`` of the square (cubic) regions, or a tuple of sides, one per spatial
        axis (``(R_h, R_w)`` or ``(R_d, R_h, R_w)``: boxes, ``d`` their number of cells).
      bce_weight: weight ``w`` in ``[0, 1]`` of the BCE term; ``1 - w`` weights the RMI term. A
        Python number or a 0-d tensor (then both terms are always computed, and the value is
        not checked).
      downsampling_method: ``"max"`` or ``"avg"`` pooling (kernel = stride, padding
        ``stride // 2``), or ``"region-extraction"`` (regions every ``stride`` pixels).
      stride: downsampling factor, or a tuple of one per spatial axis; 1 disables downsampling
        (along that axis).
      use_log_trace: log-determinant as ``2 sum(log(diag(chol) + 1e-8))`` (the reference's
        default); ``False`` gives the plain log-determinant.
      use_double_precision: compute the statistics in float64 (float64 inputs always are).
      epsilon: the ridge added to both covariance matrices; at least
        ``rmi_core.numerics.minimum_epsilon`` for the dtype of the statistics and the map size.
      reduction: ``"mean"`` over the batch, ``"sum"``, or ``"none"``.
      valid_mask: optional boolean ``[N, H, W]`` (``[N, D, H, W]``) mask; ``False`` marks pixels
        to leave out (unlabelled, padding). Masked pixels leave the BCE mean, and every region
        window touching one (after downsampling, a pooled cell is masked if any pixel under it is)
        leaves the statistics: centring and covariances use the remaining windows only. Their
        values never matter. An example without a window of valid pixels is a ``ValueError``.
      return_terms: return ``LossTerms(total, bce, rmi)`` instead of the total: the loss and
        its two unweighted terms, each reduced like the loss (``total = w bce + (1 - w) rmi``),
        for logging; both terms are then computed whatever the weight.

    Returns:
      A scalar for ``"mean"``/``"sum"``, ``[N]`` for ``"none"`` (or a ``LossTerms`` of those);
      float64 when the statistics run in float64, else float32.

    Example:
      >>> import torch
      >>> from rmi_torch import rmi_loss
      >>> logits = torch.randn(2, 3, 32, 32, requires_grad=True)
      >>> target = torch.randint(0, 2, (2, 3, 32, 32)).float()
      >>> rmi_loss(logits, target, with_logits=True).backward()

    References:
      Zhao, Wang, Yang, Cai. "Region Mutual Information Loss for Semantic Segmentation",
      NeurIPS 2019. https://arxiv.org/abs/1910.12037
    """
    check_dense_options(**call_options(locals(), ("input", "target", "valid_mask")))
    radius, stride = _check_inputs(
        input, target, valid_mask, radius=radius, method=downsampling_method, stride=stride
    )
    # Elementwise work (BCE, sigmoid, pooling) in the input precision but at least float32, as the
    # reference does; statistics in float32 unless float64 was asked for or given.
    work_dtype = torch.promote_types(input.dtype, torch.float32)
    stats_dtype = torch.float64 if use_double_precision else work_dtype
    grid = dense_window_grid(tuple(input.shape[2:]), radius, downsampling_method, stride)
    check_epsilon_in(stats_dtype, epsilon, radius, grid)
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

    # Non-finite values are flagged before the probabilities are clipped to [0, 1].
    flags = None if with_logits else non_finite_flags(input, target)
    if not with_logits:
        input = clip_probabilities(input)
    bce_weight = weight_in(bce_weight, stats_dtype, input.device)
    need_bce, need_rmi = terms_to_compute(bce_weight, 1.0 - bce_weight, return_terms)
    # The sigmoid is increasing, so it commutes with max pooling: pooling the logits first
    # applies it to a stride**2 times smaller map and keeps no full-size copy for autograd.
    pool_logits = with_logits and downsampling_method == "max" and max(stride) > 1
    bce = rmi = pooled_logits = None
    if need_bce:
        # Unlike rmi_jax, the BCE pools the logits for the RMI term in passing: its backward
        # then adds both gradients in one full-size buffer (measured: one full-size pass less).
        bce, pooled_logits = bce_per_example(
            input,
            target,
            with_logits,
            pixel_mask,
            pool_stride=stride if pool_logits and need_rmi else None,
        )
        bce = bce.to(stats_dtype)
        # The BCE of logits is NaN or infinite wherever an input is: it flags them for free.
        flags = bce if with_logits else flags
    if need_rmi:
        if pooled_logits is not None:
            p_maps = torch.sigmoid(pooled_logits)
        elif with_logits and downsampling_method == "max":
            p_maps = torch.sigmoid(downsample(input, downsampling_method, stride))
        else:
            probabilities = torch.sigmoid(input) if with_logits else input
            p_maps = downsample(probabilities, downsampling_method, stride)
        rmi = lower_bound(
            p_maps,
            downsample(target, downsampling_method, stride),
            window_mask,
            radius=radius,
            step=window_step(downsampling_method, stride),
            epsilon=epsilon,
            offset=CHOLESKY_LOG_OFFSET if use_log_trace else 0.0,
            dtype=stats_dtype,
        ).sum(dim=1)
    if flags is None:
        flags = non_finite_flags(input, target)
    rmi_weight = 1.0 - bce_weight
    return combine_terms(
        bce_weight, bce, rmi_weight, rmi, flags, reduction=reduction, return_terms=return_terms
    )


def non_finite_flags(*tensors: torch.Tensor) -> torch.Tensor:
    """Per example (leading axis): 0, or not finite when an entry of ``tensors`` is NaN or
    infinite (one read of each; outside autograd). A plain sum: ``(x * 0).sum()`` would be exact
    for finite values past 1e30 too, at the cost of a full-size temporary."""
    return sum(t.detach().sum(dim=tuple(range(1, t.dim()))) for t in tensors)


def clip_probabilities(p: torch.Tensor) -> torch.Tensor:
    """Probabilities clipped to [0, 1], with the gradient of the identity inside and at the
    bounds, zero outside; NaN stays NaN.

    Written with ``where`` rather than ``clamp``: the loss's gradient at a saturated probability
    (exactly 0 or 1) is the unclipped function's, and ``clamp``'s gradient at its bounds is a
    convention that changed between PyTorch releases (zero at the bounds since 2.14).
    """
    return torch.where(p < 0, 0.0, torch.where(p > 1, 1.0, p))


def weight_in(weight, dtype: torch.dtype, device: torch.device):
    """A term weight as used: a Python number as it is, a tensor weight in ``dtype`` (so that a
    float64 schedule does not turn a float32 loss into float64) on the inputs' device."""
    return torch.as_tensor(weight, dtype=dtype, device=device) if is_array(weight) else weight


class OptionsModule(nn.Module):
    """A loss module whose constructor arguments are the options of one loss function: checked
    once, kept as attributes of their own names (as the modules it replaces keep them), passed
    to the function by :meth:`options`, and listed by ``repr``."""

    def _set_options(self, options: dict, check) -> None:
        check(**options)
        self._option_names = tuple(options)
        for name, value in options.items():
            setattr(self, name, value)

    def options(self) -> dict:
        return {name: getattr(self, name) for name in self._option_names}

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={value!r}" for name, value in self.options().items())


class RMILoss(OptionsModule):
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
        radius: SpatialOption = 3,
        bce_weight: float = 0.5,
        downsampling_method: DownsamplingMethod = "max",
        stride: SpatialOption = 3,
        use_log_trace: bool = True,
        use_double_precision: bool = True,
        epsilon: float = 0.0005,
        reduction: Reduction = "mean",
        return_terms: bool = False,
    ) -> None:
        super().__init__()
        self._set_options(call_options(locals(), ()), check_dense_options)

    def forward(
        self, input: torch.Tensor, target: torch.Tensor, valid_mask: torch.Tensor | None = None
    ) -> torch.Tensor | LossTerms:
        """The loss of ``input`` against ``target``, optionally over ``valid_mask`` pixels only."""
        return rmi_loss(input, target, valid_mask=valid_mask, **self.options())


def check_epsilon_in(dtype: torch.dtype, epsilon: float, radius: Sizes, grid: Sizes) -> None:
    """:func:`rmi_core.numerics.check_epsilon` for statistics in ``dtype``."""
    unit_roundoff, name = torch.finfo(dtype).eps, _dtype_name(dtype)
    check_epsilon(epsilon, radius=radius, grid=grid, unit_roundoff=unit_roundoff, dtype_name=name)


def _dtype_name(dtype: torch.dtype) -> str:
    """``"float32"`` rather than ``"torch.float32"``: the messages read as in the JAX backend."""
    return str(dtype).removeprefix("torch.")


# The layouts of each rank, as the messages describe them.
LAYOUTS = {4: "images, [N, C, H, W]", 5: "volumes, [N, C, D, H, W]"}


def check_prediction(name: str, x: object) -> tuple[int, ...]:
    """A tensor of rank 4 (NCHW) or 5 (NCDHW) with a floating dtype; returns its shape."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    check_rank(name, tuple(x.shape), LAYOUTS)
    check_floating(name, x.is_floating_point(), _dtype_name(x.dtype))
    return tuple(x.shape)


def _check_inputs(
    input: object,
    target: object,
    mask: object,
    *,
    radius: SpatialOption,
    method: str,
    stride: SpatialOption,
) -> tuple[Sizes, Sizes]:
    """Check types, ranks, shapes, dtypes and that a region fits after downsampling; returns
    ``radius`` and ``stride`` per spatial axis."""
    shape = check_prediction("input", input)
    rank = len(shape) - 2
    radius, stride = per_axis("radius", radius, rank), per_axis("stride", stride, rank)
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    check_dense_shapes(
        "input", shape, shape, tuple(target.shape), radius=radius, method=method, stride=stride
    )
    if target.is_complex():
        raise TypeError(
            f"target must have a floating, integer or bool dtype, got {_dtype_name(target.dtype)}"
        )
    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"valid_mask must be a torch.Tensor, got {type(mask).__name__}")
        check_mask_shape("input", tuple(mask.shape), shape, 1)
        if mask.dtype != torch.bool:
            raise TypeError(f"valid_mask must have dtype bool, got {_dtype_name(mask.dtype)}")
    return radius, stride
