"""Independent float64 NumPy reference of the RMI loss, written from ``docs/semantics.md`` alone.

It shares no code with ``rmi_jax`` or ``rmi_torch`` and deliberately takes other routes where
there is a choice (sliding-window views instead of padding-and-reshaping or ``unfold``, a linear
solve and a Cholesky factor of the normal-equations matrices instead of a QR of the data), so a
mistake in one is unlikely to be repeated in the other. Everything runs in float64, loop-free.

All arrays are ``[N, C, *S]`` with any number ``k`` of spatial axes ``S`` (NCHW images,
NCDHW volumes, ...), masks and label maps ``[N, *S]``. Every spatial axis is treated alike:
regions are boxes ``r_1 x ... x r_k``, and each size option (``radius``, ``stride``,
``rmi_radius``, ``rmi_pool_size``, ``rmi_pool_stride``) is an int, the same on every spatial
axis, or a tuple of one value per spatial axis (``per_axis``). A region vector holds the box in
row-major order (last axis fastest: ``unfold``'s order in 2-D), and the windows are enumerated
row-major. ``dense_rmi_per_example`` (``docs/semantics.md#dense-targets``) returns the
per-example losses, shape ``[N]``, whose mean is the libraries' ``"mean"`` value;
``label_rmi_loss`` (``docs/semantics.md#label-maps``) returns the scalar loss, which has no
per-example split.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

# docs/semantics.md#dense-targets, step 7: the offset in the log of each Cholesky diagonal entry.
CHOLESKY_LOG_OFFSET = 1e-8
# docs/semantics.md#dense-targets, step 1: PyTorch's binary_cross_entropy clamps each log at -100.
BCE_LOG_CLAMP = -100.0
# docs/semantics.md#label-maps, step 4: added to the label-map probabilities.
LABEL_PROBABILITY_OFFSET = 1e-6
# docs/semantics.md#label-maps, step 6: the fixed ridge of the label-map semantics.
LABEL_EPSILON = 5e-4


def sigmoid(x: np.ndarray) -> np.ndarray:
    # exp of a non-positive number only, so no overflow for large |x|.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def bce_with_logits(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0) - x * y + np.log1p(np.exp(-np.abs(x)))


def bce_with_probabilities(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        log_p = np.maximum(np.log(p), BCE_LOG_CLAMP)
        log_not_p = np.maximum(np.log(1.0 - p), BCE_LOG_CLAMP)
    return -(y * log_p + (1.0 - y) * log_not_p)


Size = int | Sequence[int]


def per_axis(value: Size, rank: int) -> tuple[int, ...]:
    """An int-or-tuple size option as a tuple of ``rank`` ints: an int is the same on every
    spatial axis; a tuple must have exactly one value per spatial axis (else ``ValueError``)."""
    if np.ndim(value) > 0:
        sizes = tuple(operator.index(v) for v in value)
        if len(sizes) != rank:
            raise ValueError(
                f"expected an int or {rank} values (one per spatial axis), got {value}"
            )
        return sizes
    return (operator.index(value),) * rank


def _sizes(spatial_rank: int | None, *options: Size) -> tuple[tuple[int, ...], ...]:
    """The ``options`` as tuples of one common spatial rank: ``spatial_rank`` when given, else
    the length of the first tuple among them, else 2 (an int alone means the last two axes, as
    these helpers always took it)."""
    if spatial_rank is None:
        spatial_rank = next((len(o) for o in options if np.ndim(o) > 0), 2)
    return tuple(per_axis(o, spatial_rank) for o in options)


def _spatial_rank(maps: np.ndarray) -> int:
    """The number of spatial axes of ``[N, C, *S]`` maps (at least one)."""
    if np.ndim(maps) < 3:
        raise ValueError(f"maps must be [N, C, *S] with a spatial axis, got shape {np.shape(maps)}")
    return np.ndim(maps) - 2


def _last_axes(rank: int) -> tuple[int, ...]:
    return tuple(range(-rank, 0))


def pooled_size(size: int, stride: int) -> int:
    """Cells of one pooled axis of length ``size``."""
    return (size + 2 * (stride // 2) - stride) // stride + 1


def pool(
    maps: np.ndarray, stride: Size, method: str, *, spatial_rank: int | None = None
) -> np.ndarray:
    """Max or average pool of the last ``k`` axes: on axis ``i`` kernel = step = ``stride_i``,
    padding ``stride_i // 2`` on both sides (never winning the max; counted by the average).

    ``k`` is ``spatial_rank``, else ``len(stride)`` for a tuple, else 2.
    """
    (stride,) = _sizes(spatial_rank, stride)
    rank = len(stride)
    fill = -np.inf if method == "max" else 0.0
    padding = [(0, 0)] * (maps.ndim - rank) + [(s // 2, s // 2) for s in stride]
    padded = np.pad(maps, padding, constant_values=fill)
    # Windows at every offset, then every stride_i-th along each axis: kernel = step = stride.
    axes = _last_axes(rank)
    steps = tuple(slice(None, None, s) for s in stride)
    windows = sliding_window_view(padded, stride, axis=axes)[(..., *steps) + (slice(None),) * rank]
    if method == "max":
        return windows.max(axis=axes)
    # count_include_pad: padded zeros count, so every window divides by its full size.
    return windows.sum(axis=axes) / np.prod(stride)


def _nearest_source_indices(size_in: int, size_out: int) -> np.ndarray:
    """Source index ``floor(i * in / out)`` of each output index, rounded as PyTorch rounds it.

    PyTorch forms the scale ``in / out`` and its product with ``i`` in float32; exact or float64
    arithmetic picks a different source for some sizes (e.g. 106 -> 26: output 13 reads row 52,
    not 53), so the index rule is reproduced in float32. The maps themselves stay float64.
    """
    scale = np.float32(size_in) / np.float32(size_out)
    positions = np.arange(size_out, dtype=np.float32) * scale
    return np.minimum(np.floor(positions).astype(np.int64), size_in - 1)


def _output_shape(size: tuple) -> tuple[int, ...]:
    """The output shape of ``resize_*(maps, out_h, out_w)`` (the 2-D form, ints) or of
    ``resize_*(maps, (out_1, ..., out_k))``."""
    if len(size) == 1 and np.ndim(size[0]) > 0:
        size = tuple(size[0])
    return tuple(operator.index(s) for s in size)


def resize_nearest(maps: np.ndarray, *size: Size) -> np.ndarray:
    """PyTorch ``interpolate(mode="nearest")`` of the last ``k`` axes to ``size``, given as
    ``k`` ints or one tuple of ``k`` ints; the index rule is applied per axis."""
    shape = _output_shape(size)
    sources = [
        _nearest_source_indices(n, out)
        for n, out in zip(maps.shape[-len(shape) :], shape, strict=True)
    ]
    # An open mesh of the per-axis indices reads the outer product of the selections.
    return maps[(..., *np.ix_(*sources))]


def _corner_aligned_interpolation_matrix(size_in: int, size_out: int) -> np.ndarray:
    """``[size_out, size_in]`` linear interpolation weights with corners aligned."""
    if size_out == 1:
        positions = np.zeros(1)
    else:
        positions = np.arange(size_out) * ((size_in - 1) / (size_out - 1))
    lower = np.minimum(np.floor(positions).astype(int), size_in - 1)
    upper = np.minimum(lower + 1, size_in - 1)
    frac = positions - lower
    weights = np.zeros((size_out, size_in))
    np.add.at(weights, (np.arange(size_out), lower), 1.0 - frac)
    np.add.at(weights, (np.arange(size_out), upper), frac)
    return weights


def _along_each_axis(matrices: list[np.ndarray], maps: np.ndarray) -> np.ndarray:
    """The ``[out_i, in_i]`` matrices applied to the last ``k = len(matrices)`` axes.

    One einsum over all axes at once, ``maps`` first: one running sum per output cell, which
    gives the fixtures' 2-D numbers bit for bit (applying the matrices axis by axis rounds
    otherwise, up to 1e-14 of the loss). It costs ``prod(out) * prod(in)`` per map, which the
    reference's small maps afford.
    """
    rank = len(matrices)
    inputs, outputs = list(range(rank)), list(range(rank, 2 * rank))
    operands: list = [maps, [..., *inputs]]
    for matrix, axis_in, axis_out in zip(matrices, inputs, outputs, strict=True):
        operands += [matrix, [axis_out, axis_in]]
    return np.einsum(*operands, [..., *outputs])


def resize_multilinear_corners(maps: np.ndarray, *size: Size) -> np.ndarray:
    """PyTorch ``interpolate(align_corners=True)``, ``"bilinear"`` in 2-D and ``"trilinear"``
    in 3-D, of the last ``k`` axes to ``size`` (``k`` ints or one tuple of ``k`` ints).

    Multilinear weights are products of 1-D ones: the corner-aligned matrix of every axis.
    """
    shape = _output_shape(size)
    matrices = [
        _corner_aligned_interpolation_matrix(n, out)
        for n, out in zip(maps.shape[-len(shape) :], shape, strict=True)
    ]
    return _along_each_axis(matrices, maps)


# The 2-D name, kept for its callers: the same function.
resize_bilinear_corners = resize_multilinear_corners


def regions(
    maps: np.ndarray, radius: Size, step: Size, *, spatial_rank: int | None = None
) -> np.ndarray:
    """``[..., *S]`` -> ``[..., d, L]``: every full box of sides ``radius`` at spacing ``step``
    on the last ``k`` axes, ``d = prod(radius)`` entries row-major within the box, the ``L``
    windows row-major.

    ``k`` is ``spatial_rank``, else the length of a tuple ``radius`` or ``step``, else 2.
    """
    radius, step = _sizes(spatial_rank, radius, step)
    rank = len(radius)
    steps = tuple(slice(None, None, s) for s in step)
    windows = sliding_window_view(maps, radius, axis=_last_axes(rank))
    windows = windows[(..., *steps) + (slice(None),) * rank]
    # [..., *window positions, *offsets]: C order flattens both row-major.
    lead = windows.shape[: -2 * rank]
    flat = windows.reshape(*lead, -1, int(np.prod(radius)))
    return np.swapaxes(flat, -1, -2)


def lower_bound(
    p_regions: np.ndarray,
    y_regions: np.ndarray,
    epsilon: float,
    use_log_trace: bool,
    window_weights: np.ndarray | None = None,
) -> np.ndarray:
    """``0.5 * logdet(M + eps I) / d`` per leading index, from ``[..., d, L]``
    (docs/semantics.md#dense-targets, steps 5-7); ``d`` is the vector length, ``prod(radius)``.

    ``window_weights`` (``[..., L]``, 0 or 1) drops windows from the centring and the
    covariances; ``None`` keeps them all.
    """
    if window_weights is None:
        window_weights = np.ones(p_regions.shape[:-2] + p_regions.shape[-1:])
    weights = window_weights[..., None, :]
    count = weights.sum(axis=-1, keepdims=True)
    p = (p_regions - (p_regions * weights).sum(-1, keepdims=True) / count) * weights
    y = (y_regions - (y_regions * weights).sum(-1, keepdims=True) / count) * weights
    d = p.shape[-2]
    eye = np.eye(d)
    s_yy = y @ np.swapaxes(y, -1, -2)
    s_pp = p @ np.swapaxes(p, -1, -2)
    s_yp = y @ np.swapaxes(p, -1, -2)
    # (Spp + eps I)^-1 Syp^T by a solve, not an explicit inverse.
    m = s_yy - s_yp @ np.linalg.solve(s_pp + epsilon * eye, np.swapaxes(s_yp, -1, -2))
    m = 0.5 * (m + np.swapaxes(m, -1, -2)) + epsilon * eye
    if use_log_trace:
        chol = np.linalg.cholesky(m)
        diag = np.diagonal(chol, axis1=-2, axis2=-1)
        log_det = 2.0 * np.log(diag + CHOLESKY_LOG_OFFSET).sum(-1)
    else:
        sign, log_det = np.linalg.slogdet(m)
        assert np.all(sign > 0), "M + eps I must be positive definite"
    return 0.5 * log_det / d


def dense_regions(
    pred: np.ndarray,
    target: np.ndarray,
    *,
    with_logits: bool,
    radius: Size,
    downsampling_method: str,
    stride: Size,
    valid_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Region vectors ``[N, C, d, L]`` of probabilities and target ``[N, C, *S]``
    (docs/semantics.md#dense-targets, steps 2-4), and the ``[N, C, L]`` 0/1 weights of the
    windows that touch no masked pixel of the ``[N, *S]`` mask (``None`` unmasked).

    ``radius`` and ``stride``: an int for every spatial axis, or one value per spatial axis.
    """
    rank = _spatial_rank(pred)
    radius, stride = per_axis(radius, rank), per_axis(stride, rank)
    probs = sigmoid(pred) if with_logits else pred
    step = (1,) * rank
    cell_valid = None if valid_mask is None else valid_mask[:, None].astype(np.float64)
    downsamples = any(s > 1 for s in stride)
    if downsamples and downsampling_method in ("max", "avg"):
        probs = pool(probs, stride, downsampling_method)
        target = pool(target, stride, downsampling_method)
        if cell_valid is not None:
            # A pooled cell is valid when no pixel under it is masked; padding is not a pixel.
            invalid = pool(1.0 - cell_valid, stride, "max")
            cell_valid = 1.0 - np.maximum(invalid, 0.0)
    elif downsamples:
        step = stride

    p_regions = regions(probs, radius, step)
    y_regions = regions(target, radius, step)
    window_weights = None
    if cell_valid is not None:
        window_weights = windows_of_valid_cells(cell_valid, radius, step)
        window_weights = np.broadcast_to(
            window_weights, p_regions.shape[:2] + window_weights.shape[-1:]
        )
    return p_regions, y_regions, window_weights


def windows_of_valid_cells(
    cell_valid: np.ndarray, radius: Size, step: Size, *, spatial_rank: int | None = None
) -> np.ndarray:
    """``[..., *s]`` 0/1 cell validity -> ``[..., L]`` 0/1: windows made of valid cells only
    (the windows of ``regions``, with its rule for the spatial rank)."""
    vectors = regions(cell_valid, radius, step, spatial_rank=spatial_rank)
    return (vectors.min(axis=-2) > 0.5).astype(np.float64)


def joint_condition_number(pred: np.ndarray, target: np.ndarray, **options) -> float:
    """Largest 2-norm condition number over ``(n, c)`` of ``J = Z Z^T + eps I``
    (docs/semantics.md#the-joint-matrix-and-its-schur-complement).

    The float32 statistics lose about ``u * cond(J)`` relative accuracy in the gradient (and far
    less in the value, which is a log), so the parity tests scale their float32 bound with it.
    """
    epsilon = options.pop("epsilon", 5e-4)
    for unused in ("bce_weight", "use_log_trace"):
        options.pop(unused, None)
    p, y, weights = dense_regions(
        np.asarray(pred, np.float64),
        np.asarray(target, np.float64),
        **{"radius": 3, "downsampling_method": "max", "stride": 3, **options},
    )
    return joint_condition_of_regions(p, y, epsilon, weights)


def joint_condition_of_regions(
    p_regions: np.ndarray,
    y_regions: np.ndarray,
    epsilon: float,
    window_weights: np.ndarray | None = None,
) -> float:
    """Largest condition number of ``J = Z Z^T + eps I`` over the leading indices of ``[..., d, L]``
    region vectors (``Z`` the centred ``[P; Y]``, over the windows of nonzero weight)."""
    z = np.concatenate([p_regions, y_regions], axis=-2)
    if window_weights is None:
        window_weights = np.ones(z.shape[:-2] + z.shape[-1:])
    weights = window_weights[..., None, :]
    z = (z - (z * weights).sum(-1, keepdims=True) / weights.sum(-1, keepdims=True)) * weights
    joint = z @ np.swapaxes(z, -1, -2) + epsilon * np.eye(z.shape[-2])
    return float(np.linalg.cond(joint).max())


def dense_rmi_per_example(
    pred: np.ndarray,
    target: np.ndarray,
    *,
    with_logits: bool,
    radius: Size = 3,
    bce_weight: float = 0.5,
    downsampling_method: str = "max",
    stride: Size = 3,
    use_log_trace: bool = True,
    epsilon: float = 5e-4,
    valid_mask: np.ndarray | None = None,
) -> np.ndarray:
    """docs/semantics.md#dense-targets (the ``rmi-pytorch`` semantics) per example, ``[N]``.

    ``pred`` and ``target`` are ``[N, C, *S]``; ``radius`` and ``stride`` are ints (every
    spatial axis) or tuples (one value per spatial axis). ``valid_mask`` (``[N, *S]`` booleans,
    the project's extension): masked pixels leave the BCE mean, and every region window that
    touches one (after downsampling, where a pooled cell is valid only if all the pixels it
    covers are) leaves the statistics.
    """
    pred = np.asarray(pred, np.float64)
    target = np.asarray(target, np.float64)
    n = pred.shape[0]

    bce_term = np.zeros(n)  # step 1: not computed when its weight is 0
    if bce_weight != 0:
        bce = bce_with_logits(pred, target) if with_logits else bce_with_probabilities(pred, target)
        if valid_mask is None:
            bce_term = bce.reshape(n, -1).mean(axis=1)
        else:
            mask = np.broadcast_to(valid_mask[:, None], bce.shape).astype(np.float64)
            bce_term = (bce * mask).reshape(n, -1).sum(1) / mask.reshape(n, -1).sum(1)

    p_regions, y_regions, window_weights = dense_regions(
        pred,
        target,
        with_logits=with_logits,
        radius=radius,
        downsampling_method=downsampling_method,
        stride=stride,
        valid_mask=valid_mask,
    )
    bounds = lower_bound(p_regions, y_regions, epsilon, use_log_trace, window_weights)
    rmi_term = bounds.sum(axis=1)
    return (1.0 - bce_weight) * rmi_term + bce_weight * bce_term


def dense_rmi_loss(pred: np.ndarray, target: np.ndarray, **options) -> float:
    """The ``"mean"`` value (docs/semantics.md#dense-targets): the per-example losses' mean."""
    return float(dense_rmi_per_example(pred, target, **options).mean())


def label_targets(
    labels: np.ndarray, num_classes: int, ignore_index: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``[N, *S]`` valid mask and the ``[N, C, *S]`` float64 one-hot target of ``[N, *S]``
    labels (docs/semantics.md#label-maps, steps 1-2).

    Labels equal to ``ignore_index``, ``>= num_classes`` or negative are ignored; their target
    vector is all zero.
    """
    labels = np.asarray(labels)
    valid = (labels >= 0) & (labels < num_classes) & (labels != ignore_index)
    classes = np.arange(num_classes).reshape((1, num_classes) + (1,) * (labels.ndim - 1))
    return valid, ((labels[:, None] == classes) & valid[:, None]).astype(np.float64)


def _resized_shape(spatial: Sequence[int], stride: tuple[int, ...]) -> tuple[int, ...]:
    """docs/semantics.md#label-maps, step 5, ``rmi_pool_way=2``: ``S_i // stride_i``."""
    return tuple(n // s for n, s in zip(spatial, stride, strict=True))


def label_downsample(
    probabilities: np.ndarray, target: np.ndarray, pool_way: int, stride: Size
) -> tuple[np.ndarray, np.ndarray]:
    """Both ``[N, C, *S]`` maps downsampled by ``stride`` (an int for every spatial axis, or
    one per axis) the ``pool_way`` way (docs/semantics.md#label-maps, step 5)."""
    rank = _spatial_rank(probabilities)
    stride = per_axis(stride, rank)
    if all(s == 1 for s in stride):
        return probabilities, target
    if pool_way == 2:
        shape = _resized_shape(probabilities.shape[2:], stride)
        return resize_multilinear_corners(probabilities, shape), resize_nearest(target, shape)
    method = ("max", "avg")[pool_way]
    return pool(probabilities, stride, method), pool(target, stride, method)


def label_regions(
    logits: np.ndarray,
    valid: np.ndarray,
    target: np.ndarray,
    *,
    rmi_radius: Size,
    rmi_pool_way: int,
    rmi_pool_stride: Size,
) -> tuple[np.ndarray, np.ndarray]:
    """Region vectors ``[N, C, d, L]`` of probabilities and target, from ``[N, C, *S]`` logits
    and one-hot target and the ``[N, *S]`` valid mask (docs/semantics.md#label-maps, steps 4-5,
    and #dense-targets, step 4). Sizes: an int for every spatial axis, or one per axis."""
    rank = _spatial_rank(logits)
    probabilities = sigmoid(logits) * valid[:, None] + LABEL_PROBABILITY_OFFSET
    probabilities, target = label_downsample(probabilities, target, rmi_pool_way, rmi_pool_stride)
    radius = per_axis(rmi_radius, rank)
    return regions(probabilities, radius, 1), regions(target, radius, 1)


def label_window_weights(
    valid: np.ndarray, *, rmi_radius: Size, rmi_pool_way: int, rmi_pool_stride: Size
) -> np.ndarray:
    """``exclude_ignored`` (the project's extension): ``[N, 1, L]`` 0/1 weights of the windows
    whose downsampled cells all come from valid pixels of the ``[N, *S]`` mask only.

    A pooled cell is valid when its whole pooling window is; a resized cell when the nearest
    source pixel and every pixel of nonzero multilinear weight are.
    """
    rank = valid.ndim - 1
    radius, stride = per_axis(rmi_radius, rank), per_axis(rmi_pool_stride, rank)
    masked = 1.0 - valid.astype(np.float64)
    downsamples = any(s > 1 for s in stride)
    if downsamples and rmi_pool_way == 2:
        shape = _resized_shape(masked.shape[1:], stride)
        # A multilinear weight is a product of 1-D taps, so it is nonzero exactly where every
        # axis's tap is: counting masked pixels under the 0/1 tap matrices finds them all.
        taps = [
            (_corner_aligned_interpolation_matrix(n, out) != 0) * 1.0
            for n, out in zip(masked.shape[1:], shape, strict=True)
        ]
        masked = _along_each_axis(taps, masked) + resize_nearest(masked, shape)
    elif downsamples:
        masked = pool(masked, stride, "max")
    return windows_of_valid_cells((masked == 0).astype(np.float64), radius, 1)[:, None]


def label_rmi_loss(
    logits: np.ndarray,
    labels: np.ndarray,
    *,
    num_classes: int,
    rmi_radius: Size = 3,
    rmi_pool_way: int = 0,
    rmi_pool_size: Size = 3,
    rmi_pool_stride: Size = 3,
    loss_weight_lambda: float = 0.5,
    lambda_way: int = 1,
    ignore_index: int = 255,
    exclude_ignored: bool = False,
) -> float:
    """docs/semantics.md#label-maps (the paper authors' label-map semantics): the scalar loss.

    ``logits`` are ``[N, C, *S]``, ``labels`` integers ``[N, *S]``; the sizes are ints (every
    spatial axis) or tuples (one value per spatial axis). The BCE term is one number for the
    whole batch (its normaliser counts the valid pixels of every example), so unlike the dense
    semantics the loss has no per-example split.
    """
    logits = np.asarray(logits, np.float64)
    rank = _spatial_rank(logits)
    # Compared as tuples: 3 and (3, 3) are the same size.
    same_size = per_axis(rmi_pool_size, rank) == per_axis(rmi_pool_stride, rank)
    if not same_size or rmi_pool_way not in (0, 1, 2):
        raise ValueError("the label-map semantics need pool size == stride and a way in 0, 1, 2")
    valid, target = label_targets(labels, num_classes, ignore_index)
    bce = (bce_with_logits(logits, target) * valid[:, None]).sum() / (valid.sum() + 1.0)
    p_regions, y_regions = label_regions(
        logits,
        valid,
        target,
        rmi_radius=rmi_radius,
        rmi_pool_way=rmi_pool_way,
        rmi_pool_stride=rmi_pool_stride,
    )
    weights = None
    if exclude_ignored:
        weights = label_window_weights(
            valid,
            rmi_radius=rmi_radius,
            rmi_pool_way=rmi_pool_way,
            rmi_pool_stride=rmi_pool_stride,
        )
        assert (weights.sum(-1) > 0).all(), "every example needs a window of valid pixels"
        weights = np.broadcast_to(weights, p_regions.shape[:2] + weights.shape[-1:])
    bounds = lower_bound(
        p_regions, y_regions, LABEL_EPSILON, use_log_trace=True, window_weights=weights
    )
    rmi = bounds.mean(0).sum()
    if lambda_way == 1:
        return float(loss_weight_lambda * bce + (1.0 - loss_weight_lambda) * rmi)
    return float(bce + loss_weight_lambda * rmi)


def central_differences(function, x: np.ndarray, step: float = 1e-6) -> np.ndarray:
    """Gradient of a scalar ``function`` at ``x`` by central differences, one element at a time."""
    x = np.array(x, dtype=np.float64)
    grad = np.empty_like(x)
    flat_x, flat_grad = x.reshape(-1), grad.reshape(-1)
    for i in range(flat_x.size):
        original = flat_x[i]
        flat_x[i] = original + step
        upper = function(x)
        flat_x[i] = original - step
        lower = function(x)
        flat_x[i] = original
        flat_grad[i] = (upper - lower) / (2.0 * step)
    return grad
