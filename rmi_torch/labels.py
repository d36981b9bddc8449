"""RMI loss from integer label maps: the paper authors' semantics (SPEC §2), and its validation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rmi_torch._windows import map_size_after_downsampling, minimum_input_size
from rmi_torch.api import (
    CHOLESKY_LOG_OFFSET,
    _dtype_name,
    _require_bool,
    _require_int,
    _require_real,
    _rmi_lower_bound,
    check_prediction,
    masked_window_weights,
)

# What each ``rmi_pool_way`` does, and the dense semantics' name for the two poolings.
POOL_WAYS = {0: "max pooling", 1: "average pooling", 2: "interpolation"}
_POOLING_METHODS = {0: "max", 1: "avg"}
LAMBDA_WAYS = {0: "BCE + lambda * RMI", 1: "lambda * BCE + (1 - lambda) * RMI"}
# The authors' code adds this to every probability (an offset, not a clamp) and fixes epsilon.
PROBABILITY_OFFSET = 1e-6
EPSILON = 5e-4
# ignore_index may be any label value, negative ones included (labels are at most int64).
_SMALLEST_LABEL = -(2**63)


def rmi_loss_from_labels(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_classes: int,
    rmi_radius: int = 3,
    rmi_pool_way: int = 0,
    rmi_pool_size: int = 3,
    rmi_pool_stride: int = 3,
    loss_weight_lambda: float = 0.5,
    lambda_way: int = 1,
    ignore_index: int = 255,
    use_double_precision: bool = True,
    exclude_ignored: bool = False,
) -> torch.Tensor:
    r"""RMI loss of logits against an integer label map, as in the RMI paper authors' code.

    Pixels whose label is ``ignore_index``, ``>= num_classes`` or negative are ignored. With
    :math:`v` the valid mask, :math:`y` the one-hot target of the valid labels (zero at ignored
    pixels) and :math:`V = \sum v` over the whole batch,
    :math:`\mathrm{BCE} = \sum v \, \mathrm{bce}(x, y) / (V + 1)` (summed over pixels and
    classes) and :math:`\mathrm{RMI} = \sum_c \mathrm{mean}_n \log\det(M_{nc} + \epsilon I) / (2d)`
    with :math:`M_{nc}` the posterior covariance of the ``R x R`` region vectors of the
    downsampled target and probabilities :math:`\sigma(x) v + 10^{-6}` (see :func:`rmi_loss`),
    :math:`d = R^2`, :math:`\epsilon = 5 \cdot 10^{-4}`. The loss is
    :math:`\lambda \mathrm{BCE} + (1 - \lambda) \mathrm{RMI}` (``lambda_way=1``) or
    :math:`\mathrm{BCE} + \lambda \mathrm{RMI}` (``lambda_way=0``). Ignored pixels still count
    as points of the region statistics, as in the authors' code, unless ``exclude_ignored``.
    The value can be negative.

    Args:
      logits: ``[N, C, H, W]``, floating dtype.
      labels: integer class indices, ``[N, H, W]``.
      num_classes: number of classes ``C``; must equal ``logits.shape[1]``.
      rmi_radius: side ``R`` of the square regions.
      rmi_pool_way: downsampling before the regions: 0 max pooling, 1 average pooling (kernel =
        stride = ``rmi_pool_stride``, padding ``stride // 2``, padded zeros counted), 2 resize to
        ``(H // stride, W // stride)``, nearest for the target and bilinear with aligned corners
        for the probabilities.
      rmi_pool_size: the pooling kernel; must equal ``rmi_pool_stride``.
      rmi_pool_stride: downsampling factor; 1 disables downsampling.
      loss_weight_lambda: :math:`\lambda` in ``[0, 1]``.
      lambda_way: how :math:`\lambda` combines the two terms (1 or 0, see above).
      ignore_index: a label value to ignore besides those outside ``[0, num_classes)``.
      use_double_precision: region statistics in float64, as the authors' code computes them;
        ``False`` keeps them in float32 (accurate too: see :func:`rmi_loss`). float64 logits are
        always computed in float64.
      exclude_ignored: leave out of the statistics every region window that touches an ignored
        pixel (after downsampling: a cell is ignored if any pixel it is pooled or resized from
        is), instead of counting ignored pixels as zero points; centring and covariances use
        the remaining windows. An example without such a window is a ``ValueError``.

    Returns:
      The scalar loss, float64 when the statistics run in float64, else float32.

    Example:
      >>> import torch
      >>> from rmi_torch import rmi_loss_from_labels
      >>> logits = torch.randn(2, 5, 32, 32, requires_grad=True)
      >>> labels = torch.randint(0, 5, (2, 32, 32))
      >>> labels[:, :4] = 255  # ignored pixels
      >>> rmi_loss_from_labels(logits, labels, num_classes=5, rmi_pool_way=1).backward()

    References:
      Zhao, Cai, Xu, Yang, He. "Region Mutual Information Loss for Semantic Segmentation",
      NeurIPS 2019. https://arxiv.org/abs/1910.12037 (code: github.com/ZJULearning/RMI)
    """
    _validate_label_options(
        num_classes=num_classes,
        rmi_radius=rmi_radius,
        rmi_pool_way=rmi_pool_way,
        rmi_pool_size=rmi_pool_size,
        rmi_pool_stride=rmi_pool_stride,
        loss_weight_lambda=loss_weight_lambda,
        lambda_way=lambda_way,
        ignore_index=ignore_index,
        use_double_precision=use_double_precision,
        exclude_ignored=exclude_ignored,
    )
    _validate_label_tensors(
        logits,
        labels,
        num_classes=num_classes,
        radius=rmi_radius,
        pool_way=rmi_pool_way,
        stride=rmi_pool_stride,
    )
    # Elementwise work in the input precision but at least float32, as the authors' code does;
    # statistics in float64 unless asked otherwise.
    work_dtype = torch.promote_types(logits.dtype, torch.float32)
    stats_dtype = torch.float64 if use_double_precision else work_dtype
    logits = logits.to(work_dtype)
    valid = (labels >= 0) & (labels < num_classes) & (labels != ignore_index)
    classes = torch.arange(num_classes, device=labels.device).view(1, -1, 1, 1)
    target = ((labels.unsqueeze(1) == classes) & valid.unsqueeze(1)).to(work_dtype)

    bce_weight, rmi_weight = label_term_weights(loss_weight_lambda, lambda_way)
    loss = torch.zeros((), dtype=stats_dtype, device=logits.device)
    if bce_weight != 0:
        loss = loss + bce_weight * masked_bce(logits, target, valid)
    if rmi_weight != 0:
        probabilities = torch.sigmoid(logits) * valid.unsqueeze(1) + PROBABILITY_OFFSET
        loss = loss + rmi_weight * label_rmi_term(
            probabilities,
            target,
            valid if exclude_ignored else None,
            radius=rmi_radius,
            pool_way=rmi_pool_way,
            stride=rmi_pool_stride,
            dtype=stats_dtype,
        )
    return loss


class LabelRMILoss(nn.Module):
    """RMI loss from label maps as a module, with the constructor of the authors' ``RMILoss``.

    Same option names, order and defaults as the paper authors' code, plus ``ignore_index``,
    ``use_double_precision`` and ``exclude_ignored``. ``forward(logits, labels)`` takes
    ``[N, C, H, W]`` logits and ``[N, H, W]`` integer labels; see :func:`rmi_loss_from_labels`.

    Example:
      >>> import torch
      >>> from rmi_torch import LabelRMILoss
      >>> loss = LabelRMILoss(num_classes=21, rmi_pool_way=1, rmi_pool_size=4, rmi_pool_stride=4)
      >>> logits = torch.randn(2, 21, 64, 64, requires_grad=True)
      >>> labels = torch.randint(0, 21, (2, 64, 64))
      >>> loss(logits, labels).backward()
    """

    def __init__(
        self,
        num_classes: int = 21,
        rmi_radius: int = 3,
        rmi_pool_way: int = 0,
        rmi_pool_size: int = 3,
        rmi_pool_stride: int = 3,
        loss_weight_lambda: float = 0.5,
        lambda_way: int = 1,
        ignore_index: int = 255,
        use_double_precision: bool = True,
        exclude_ignored: bool = False,
    ) -> None:
        super().__init__()
        _validate_label_options(
            num_classes=num_classes,
            rmi_radius=rmi_radius,
            rmi_pool_way=rmi_pool_way,
            rmi_pool_size=rmi_pool_size,
            rmi_pool_stride=rmi_pool_stride,
            loss_weight_lambda=loss_weight_lambda,
            lambda_way=lambda_way,
            ignore_index=ignore_index,
            use_double_precision=use_double_precision,
            exclude_ignored=exclude_ignored,
        )
        self.num_classes = num_classes
        self.rmi_radius = rmi_radius
        self.rmi_pool_way = rmi_pool_way
        self.rmi_pool_size = rmi_pool_size
        self.rmi_pool_stride = rmi_pool_stride
        self.loss_weight_lambda = loss_weight_lambda
        self.lambda_way = lambda_way
        self.ignore_index = ignore_index
        self.use_double_precision = use_double_precision
        self.exclude_ignored = exclude_ignored

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return rmi_loss_from_labels(
            logits,
            labels,
            num_classes=self.num_classes,
            rmi_radius=self.rmi_radius,
            rmi_pool_way=self.rmi_pool_way,
            rmi_pool_size=self.rmi_pool_size,
            rmi_pool_stride=self.rmi_pool_stride,
            loss_weight_lambda=self.loss_weight_lambda,
            lambda_way=self.lambda_way,
            ignore_index=self.ignore_index,
            use_double_precision=self.use_double_precision,
            exclude_ignored=self.exclude_ignored,
        )

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, rmi_radius={self.rmi_radius}, "
            f"rmi_pool_way={self.rmi_pool_way}, rmi_pool_size={self.rmi_pool_size}, "
            f"rmi_pool_stride={self.rmi_pool_stride}, "
            f"loss_weight_lambda={self.loss_weight_lambda}, lambda_way={self.lambda_way}, "
            f"ignore_index={self.ignore_index}, use_double_precision={self.use_double_precision}, "
            f"exclude_ignored={self.exclude_ignored}"
        )


def label_term_weights(loss_weight_lambda: float, lambda_way: int) -> tuple[float, float]:
    """Weights of the BCE and RMI terms: ``(l, 1 - l)`` for ``lambda_way=1``, else ``(1, l)``."""
    if lambda_way == 1:
        return loss_weight_lambda, 1.0 - loss_weight_lambda
    return 1.0, loss_weight_lambda


def masked_bce(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """BCE with logits summed over valid pixels and all classes, over ``valid pixels + 1``.

    ``[N, C, H, W]`` logits and target, ``[N, H, W]`` boolean ``valid``; one number for the
    whole batch, as in the authors' code (the ``+ 1`` keeps an all-ignored batch finite).
    """
    weight = valid.unsqueeze(1).to(logits.dtype)
    summed = F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="sum")
    return summed / (valid.sum() + 1)


def label_rmi_term(
    probabilities: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor | None,
    *,
    radius: int,
    pool_way: int,
    stride: int,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Per class the batch mean of ``0.5 logdet(M + eps I) / d``, summed over classes.

    ``probabilities`` and ``target`` are ``[N, C, H, W]`` at full resolution; the statistics
    run in ``dtype``. ``valid``: ``None`` (every window counts) or the ``[N, H, W]`` mask whose
    invalid pixels' windows leave.
    """
    method = _POOLING_METHODS.get(pool_way, "max")
    window_mask = None
    if pool_way == 2 and stride > 1:
        size = (probabilities.shape[2] // stride, probabilities.shape[3] // stride)
        probabilities = F.interpolate(probabilities, size=size, mode="bilinear", align_corners=True)
        target = F.interpolate(target, size=size, mode="nearest")
        valid = None if valid is None else resize_validity(valid, size)
        stride = 1  # downsampled already: no pooling left to do
    if valid is not None:
        window_mask = masked_window_weights(
            valid,
            "labels (with exclude_ignored=True)",
            radius=radius,
            method=method,
            stride=stride,
            dtype=dtype,
        )
    lower_bound = _rmi_lower_bound(
        probabilities,
        target,
        radius=radius,
        downsampling_method=method,
        stride=stride,
        offset=CHOLESKY_LOG_OFFSET,
        epsilon=EPSILON,
        dtype=dtype,
        window_weights=window_mask,
    )
    return lower_bound.mean(dim=0).sum()


def resize_validity(valid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Which cells of the resized maps come from valid pixels only: the nearest-neighbour
    source and every bilinear tap of nonzero weight must be valid.

    A tap of nonzero weight on a masked pixel leaves a nonzero bilinear resize of the masked
    indicator, whose nonnegative weights cannot cancel; the nearest source is read directly.
    """
    masked = (~valid).unsqueeze(1).double()
    bilinear = F.interpolate(masked, size=size, mode="bilinear", align_corners=True)
    nearest = F.interpolate(masked, size=size, mode="nearest")
    return ((bilinear + nearest) == 0).squeeze(1)


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


def _require_choice(name: str, value: object, choices: dict[int, str]) -> None:
    _require_int(name, value, min(choices))
    if value not in choices:
        listed = ", ".join(f"{key} ({meaning})" for key, meaning in choices.items())
        raise ValueError(f"{name} must be one of {listed}, got {value}")


def _validate_label_options(
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
) -> None:
    """Check the Python-valued options (also run by ``LabelRMILoss.__init__``)."""
    _require_int("num_classes", num_classes, 1)
    _require_int("rmi_radius", rmi_radius, 1)
    _require_choice("rmi_pool_way", rmi_pool_way, POOL_WAYS)
    _require_int("rmi_pool_size", rmi_pool_size, 1)
    _require_int("rmi_pool_stride", rmi_pool_stride, 1)
    if rmi_pool_size != rmi_pool_stride:
        raise ValueError(
            f"rmi_pool_size must equal rmi_pool_stride (the pooling kernel is the stride), got "
            f"rmi_pool_size={rmi_pool_size} and rmi_pool_stride={rmi_pool_stride}"
        )
    weight = _require_real("loss_weight_lambda", loss_weight_lambda)
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"loss_weight_lambda must be in [0, 1], got {loss_weight_lambda}")
    _require_choice("lambda_way", lambda_way, LAMBDA_WAYS)
    _require_int("ignore_index", ignore_index, _SMALLEST_LABEL)
    _require_bool("use_double_precision", use_double_precision)
    _require_bool("exclude_ignored", exclude_ignored)


def _is_integer_dtype(dtype: torch.dtype) -> bool:
    return not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)


def _validate_label_tensors(
    logits: object,
    labels: object,
    *,
    num_classes: int,
    radius: int,
    pool_way: int,
    stride: int,
) -> None:
    """Check ranks, shapes, dtypes and that a region fits after downsampling."""
    check_prediction("logits", logits)
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    batch, classes, height, width = logits.shape
    if tuple(labels.shape) != (batch, height, width):
        raise ValueError(
            f"labels must have shape [N, H, W] = {(batch, height, width)} to match logits of "
            f"shape {tuple(logits.shape)}, got shape {tuple(labels.shape)}"
        )
    if not _is_integer_dtype(labels.dtype):
        raise TypeError(
            f"labels must have an integer dtype (class indices), got {_dtype_name(labels.dtype)}"
        )
    if batch == 0:
        raise ValueError(f"logits must have at least one example, got shape {tuple(logits.shape)}")
    if classes != num_classes:
        raise ValueError(
            f"num_classes={num_classes} must equal the number of channels of logits, got "
            f"{classes} channels on channel_axis=1 (shape {tuple(logits.shape)})"
        )
    _check_regions_fit(height, width, radius=radius, pool_way=pool_way, stride=stride)


def _check_regions_fit(height: int, width: int, *, radius: int, pool_way: int, stride: int):
    map_h = label_map_size(height, pool_way, stride)
    map_w = label_map_size(width, pool_way, stride)
    if min(map_h, map_w) < radius:
        minimum = minimum_label_input_size(radius, pool_way, stride)
        raise ValueError(
            f"logits' spatial size {height}x{width} becomes {map_h}x{map_w} after "
            f"rmi_pool_way={pool_way} ({POOL_WAYS[pool_way]}) with rmi_pool_stride={stride}, "
            f"smaller than rmi_radius={radius}: no region fits; spatial size must be at least "
            f"{minimum}x{minimum} for these options"
        )
