"""Bad input to the label-map loss gets the same clear error from both backends."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
import torch

import rmi_jax
import rmi_torch
from rmi_core.geometry import minimum_label_input_shape

GOOD = (2, 3, 12, 12)  # NCHW logits; JAX is called with channel_axis=1 so shapes are shared.
GOOD_LABELS = (2, 12, 12)


def case(
    case_id: str,
    error: type[Exception],
    pattern: str,
    options: dict | None = None,
    *,
    logits: tuple[int, ...] = GOOD,
    labels: tuple[int, ...] = GOOD_LABELS,
    logits_dtype: str = "float32",
    labels_dtype: str = "int32",
):
    """One row of the table: the call's inputs and the error both backends must raise."""
    params = (options or {}, logits, labels, logits_dtype, labels_dtype, error, pattern)
    return pytest.param(*params, id=case_id)


CASES = [
    case("logits-rank", ValueError, r"logits must have rank 4.*\(3, 12, 12\)", logits=(3, 12, 12)),
    case(
        "labels-rank",
        ValueError,
        r"labels must have shape \[N, H, W\] = \(2, 12, 12\).*got shape \(2, 1, 12, 12\)",
        labels=(2, 1, 12, 12),
    ),
    case("labels-width", ValueError, r"= \(2, 12, 12\) to match logits", labels=(2, 12, 11)),
    case("labels-batch", ValueError, r"labels must have shape", labels=(1, 12, 12)),
    case(
        "int-logits",
        TypeError,
        r"logits must have a floating dtype, got int32",
        logits_dtype="int32",
    ),
    case(
        "float-labels",
        TypeError,
        r"labels must have an integer dtype \(class indices\), got float32",
        labels_dtype="float32",
    ),
    case("bool-labels", TypeError, r"labels must have an integer dtype", labels_dtype="bool"),
    case("empty", ValueError, r"at least one example", logits=(0, 3, 12, 12), labels=(0, 12, 12)),
    case(
        "num-classes-mismatch",
        ValueError,
        r"num_classes=4 must equal the number of channels of logits, got 3",
        {"num_classes": 4},
    ),
    case("num-classes<1", ValueError, r"num_classes must be >= 1, got 0", {"num_classes": 0}),
    case("num-classes-type", TypeError, r"num_classes must be an int", {"num_classes": 3.0}),
    case("radius<1", ValueError, r"rmi_radius must be >= 1, got 0", {"rmi_radius": 0}),
    case("radius-type", TypeError, r"rmi_radius must be an int", {"rmi_radius": 2.5}),
    case(
        "pool-way",
        ValueError,
        r"rmi_pool_way must be one of 0 \(max pooling\), 1 \(average pooling\), "
        r"2 \(interpolation\), got 3",
        {"rmi_pool_way": 3},
    ),
    case("pool-way<0", ValueError, r"rmi_pool_way must be >= 0, got -1", {"rmi_pool_way": -1}),
    case(
        "pool-way-type",
        TypeError,
        r"rmi_pool_way must be an int, got 'max'",
        {"rmi_pool_way": "max"},
    ),
    case(
        "size!=stride",
        ValueError,
        r"rmi_pool_size must equal rmi_pool_stride .*rmi_pool_size=3 and rmi_pool_stride=2",
        {"rmi_pool_size": 3, "rmi_pool_stride": 2},
    ),
    case(
        "size<1",
        ValueError,
        r"rmi_pool_size must be >= 1, got 0",
        {"rmi_pool_size": 0, "rmi_pool_stride": 0},
    ),
    case(
        "stride-type",
        TypeError,
        r"rmi_pool_stride must be an int",
        {"rmi_pool_size": 2, "rmi_pool_stride": 2.0},
    ),
    case(
        "lambda>1",
        ValueError,
        r"loss_weight_lambda must be in \[0, 1\], got 1.5",
        {"loss_weight_lambda": 1.5},
    ),
    case(
        "lambda<0",
        ValueError,
        r"loss_weight_lambda must be in \[0, 1\], got -0.1",
        {"loss_weight_lambda": -0.1},
    ),
    case(
        "lambda-type",
        TypeError,
        r"loss_weight_lambda must be a Python number",
        {"loss_weight_lambda": "0.5"},
    ),
    case(
        "lambda-way",
        ValueError,
        r"lambda_way must be one of 0 \(BCE \+ lambda \* RMI\), "
        r"1 \(lambda \* BCE \+ \(1 - lambda\) \* RMI\), got 2",
        {"lambda_way": 2},
    ),
    case(
        "lambda-way-bool", TypeError, r"lambda_way must be an int, got True", {"lambda_way": True}
    ),
    case("ignore-index-type", TypeError, r"ignore_index must be an int", {"ignore_index": 255.0}),
    case(
        "exclude-ignored-type",
        TypeError,
        r"exclude_ignored must be a bool, got 1",
        {"exclude_ignored": 1},
    ),
    case(
        "too-small-max",
        ValueError,
        r"6x6 becomes 2x2 after rmi_pool_way=0 \(max pooling\) with rmi_pool_stride=3, smaller "
        r"than rmi_radius=3: no region fits; spatial size must be at least 7x7",
        logits=(1, 3, 6, 6),
        labels=(1, 6, 6),
    ),
    case(
        "too-small-avg-stride4",
        ValueError,
        r"6x40 becomes 2x11 after rmi_pool_way=1 \(average pooling\) with rmi_pool_stride=4"
        r".*at least 8x8",
        {"rmi_pool_way": 1, "rmi_pool_size": 4, "rmi_pool_stride": 4},
        logits=(1, 3, 6, 40),
        labels=(1, 6, 40),
    ),
    case(
        "too-small-interp",
        ValueError,
        r"8x12 becomes 2x4 after rmi_pool_way=2 \(interpolation\) with rmi_pool_stride=3"
        r".*at least 9x9",
        {"rmi_pool_way": 2},
        logits=(1, 3, 8, 12),
        labels=(1, 8, 12),
    ),
    case(
        "too-small-stride1",
        ValueError,
        r"2x5 becomes 2x5 .*at least 3x3",
        {"rmi_pool_size": 1, "rmi_pool_stride": 1},
        logits=(1, 3, 2, 5),
        labels=(1, 2, 5),
    ),
]


def call_jax(overrides, logits_shape, labels_shape, logits_dtype, labels_dtype):
    options = {"num_classes": 3, "channel_axis": 1, **overrides}
    logits = jnp.zeros(logits_shape, logits_dtype)
    return rmi_jax.rmi_loss_from_labels(logits, jnp.zeros(labels_shape, labels_dtype), **options)


def call_torch(overrides, logits_shape, labels_shape, logits_dtype, labels_dtype):
    options = {"num_classes": 3, **overrides}
    logits = torch.zeros(logits_shape, dtype=getattr(torch, logits_dtype))
    labels = torch.zeros(labels_shape, dtype=getattr(torch, labels_dtype))
    return rmi_torch.rmi_loss_from_labels(logits, labels, **options)


@pytest.mark.parametrize("backend", [call_jax, call_torch], ids=["jax", "torch"])
@pytest.mark.parametrize(
    "overrides, logits_shape, labels_shape, logits_dtype, labels_dtype, error, pattern", CASES
)
def test_bad_input_raises_clear_error(
    backend, overrides, logits_shape, labels_shape, logits_dtype, labels_dtype, error, pattern
) -> None:
    with pytest.raises(error, match=pattern):
        backend(overrides, logits_shape, labels_shape, logits_dtype, labels_dtype)


# The sizes come from rmi_core, shared by both backends; each backend computes the loss at the
# minimum, which costs JAX a compilation per shape: its other sizes are in the full tier.
MINIMUM_SIZE_CASES = [
    pytest.param(
        backend,
        pool_way,
        stride,
        radius,
        id=f"{stride}-{radius}-{pool_way}-{name}",
        marks=pytest.mark.full if name == "jax" and (stride, radius) != (3, 3) else (),
    )
    for stride, radius in [(1, 3), (2, 2), (3, 3), (4, 2)]
    for pool_way in [0, 1, 2]
    for backend, name in [(call_jax, "jax"), (call_torch, "torch")]
]


@pytest.mark.parametrize("backend, pool_way, stride, radius", MINIMUM_SIZE_CASES)
def test_the_minimum_size_in_the_message_is_exact(backend, pool_way, stride, radius) -> None:
    minimum = minimum_label_input_shape((radius,) * 2, pool_way, (stride,) * 2)[0]
    options = {
        "rmi_pool_way": pool_way,
        "rmi_pool_size": stride,
        "rmi_pool_stride": stride,
        "rmi_radius": radius,
    }
    backend(options, (1, 3, minimum, minimum), (1, minimum, minimum), "float32", "int32")
    with pytest.raises(ValueError, match=rf"at least {minimum}x{minimum}"):
        backend(
            options, (1, 3, minimum - 1, minimum), (1, minimum - 1, minimum), "float32", "int32"
        )


@pytest.mark.parametrize(
    "channel_axis, error, pattern",
    [
        (4, ValueError, r"channel_axis must be one of 1, 2, 3, -1, -2, -3 for rank-4 logits"),
        (-5, ValueError, r"channel_axis must be one of .* for rank-4 logits .*, got -5"),
        (0, ValueError, r"channel_axis must be one of .*\(axis 0 is the batch.*got 0"),
        (-4, ValueError, r"channel_axis must be one of .*\(axis 0 is the batch.*got -4"),
        (1.0, TypeError, r"channel_axis must be an int"),
    ],
)
def test_jax_rejects_bad_channel_axis(channel_axis, error, pattern) -> None:
    with pytest.raises(error, match=pattern):
        rmi_jax.rmi_loss_from_labels(
            jnp.zeros((2, 12, 12, 3)),
            jnp.zeros(GOOD_LABELS, jnp.int32),
            num_classes=3,
            channel_axis=channel_axis,
        )


def test_jax_nhwc_shape_mismatch_names_the_expected_shape() -> None:
    with pytest.raises(ValueError, match=r"= \(2, 12, 10\) to match logits of shape"):
        rmi_jax.rmi_loss_from_labels(
            jnp.zeros((2, 12, 10, 3)), jnp.zeros(GOOD_LABELS, jnp.int32), num_classes=3
        )


def test_jax_errors_are_raised_at_trace_time() -> None:
    """Under jit the checks run while tracing: no compiled computation is needed to fail."""
    traced = []

    def loss(logits, labels):
        traced.append(True)
        return rmi_jax.rmi_loss_from_labels(logits, labels, num_classes=3, rmi_pool_way=5)

    with pytest.raises(ValueError, match="rmi_pool_way must be one of"):
        jax.jit(loss).lower(jnp.zeros((2, 12, 12, 3)), jnp.zeros(GOOD_LABELS, jnp.int32))
    assert traced


def test_torch_module_validates_options_at_construction() -> None:
    with pytest.raises(ValueError, match="rmi_pool_size must equal rmi_pool_stride"):
        rmi_torch.LabelRMILoss(rmi_pool_size=3, rmi_pool_stride=4)
    with pytest.raises(TypeError, match="use_double_precision must be a bool"):
        rmi_torch.LabelRMILoss(use_double_precision=1)


@pytest.mark.parametrize("which", ["logits", "labels"])
def test_torch_rejects_non_tensors(which) -> None:
    inputs = {"logits": torch.zeros(GOOD), "labels": torch.zeros(GOOD_LABELS, dtype=torch.long)}
    inputs[which] = inputs[which].numpy()
    with pytest.raises(TypeError, match=rf"{which} must be a torch.Tensor, got ndarray"):
        rmi_torch.rmi_loss_from_labels(inputs["logits"], inputs["labels"], num_classes=3)


def test_torch_module_repr_lists_the_options() -> None:
    text = repr(rmi_torch.LabelRMILoss(num_classes=5, rmi_pool_way=1))
    assert "num_classes=5" in text and "rmi_pool_way=1" in text and "ignore_index=255" in text
