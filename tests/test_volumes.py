"""Volumes in both backends: the rank and per-axis checks, and a volume one slice deep against
the image loss (docs/semantics.md#volumes-and-per-axis-regions).

The volume fixtures in ``parity_tests/`` hold both backends to the N-d reference, in value and
gradient; these tests hold the two geometries to each other. A volume with ``D = 1`` and regions,
pooling and strides of 1 along ``D`` is the image loss: the same windows, in the same order.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import rmi_jax
import rmi_torch

# The same float64 terms, summed in another association at most (and trilinear weights of 1 and 0
# along D): relative to the value, and to the gradient's largest entry.
SAME_LOSS_RTOL = 1e-12


def assert_same_loss(volume: tuple, image: tuple) -> None:
    """A ``D = 1`` volume's value and gradient (depth axis 2) against the image's."""
    np.testing.assert_allclose(volume[0], image[0], rtol=SAME_LOSS_RTOL, atol=0)
    scale = np.abs(image[1]).max()
    np.testing.assert_allclose(
        volume[1][:, :, 0], image[1], rtol=SAME_LOSS_RTOL, atol=SAME_LOSS_RTOL * scale
    )


rng = np.random.default_rng(0)
IMAGE_PRED = rng.normal(size=(2, 3, 16, 18))
IMAGE_TARGET = (rng.random((2, 3, 16, 18)) < 0.4).astype(np.float64)
# Scattered dropped and ignored pixels (each at random), not a rectangle; few enough that some
# windows stay whole after pooling by 2.
IMAGE_MASK = rng.random((2, 16, 18)) > 0.03
IMAGE_LABELS = rng.integers(0, 3, size=(2, 16, 18))
IMAGE_LABELS[rng.random((2, 16, 18)) < 0.03] = 255


def as_volume(x: np.ndarray, spatial_start: int) -> np.ndarray:
    """``x`` with a depth axis of size 1 before its spatial axes."""
    return np.expand_dims(x, spatial_start)


def jax_value_and_grad(loss, pred: np.ndarray, *rest: np.ndarray):
    """Value and gradient with respect to ``pred`` (channels last), in float64; the gradient
    channels first, as PyTorch's."""
    with jax.enable_x64(True):
        rest = [None if r is None else jnp.asarray(r) for r in rest]
        value, grad = jax.value_and_grad(loss)(jnp.asarray(pred), *rest)
        return np.asarray(value), np.moveaxis(np.asarray(grad), -1, 1)


def torch_value_and_grad(loss, pred: np.ndarray, *rest: np.ndarray):
    x = torch.tensor(pred, requires_grad=True)
    value = loss(x, *(None if r is None else torch.as_tensor(r) for r in rest))
    value.backward()
    return value.detach().numpy(), x.grad.numpy()


def channels_last(x: np.ndarray) -> np.ndarray:
    return np.moveaxis(x, 1, -1)


def dense_jax(pred, target, mask, **options):
    loss = lambda p, t, m: rmi_jax.rmi_loss(  # noqa: E731
        p, t, with_logits=True, valid_mask=m, **options
    )
    return jax_value_and_grad(loss, channels_last(pred), channels_last(target), mask)


def dense_torch(pred, target, mask, **options):
    loss = lambda p, t, m: rmi_torch.rmi_loss(  # noqa: E731
        p, t, with_logits=True, valid_mask=m, **options
    )
    return torch_value_and_grad(loss, pred, target, mask)


DENSE_BACKENDS = {"jax": dense_jax, "torch": dense_torch}


@pytest.mark.parametrize("backend", list(DENSE_BACKENDS))
@pytest.mark.parametrize("method", ["max", "avg", "region-extraction"])
@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
def test_a_volume_one_slice_deep_is_the_image_loss(backend, method, masked) -> None:
    run = DENSE_BACKENDS[backend]
    mask = IMAGE_MASK if masked else None
    image = run(IMAGE_PRED, IMAGE_TARGET, mask, radius=3, stride=2, downsampling_method=method)
    volume = run(
        as_volume(IMAGE_PRED, 2),
        as_volume(IMAGE_TARGET, 2),
        None if mask is None else as_volume(mask, 1),
        radius=(1, 3, 3),
        stride=(1, 2, 2),
        downsampling_method=method,
    )
    assert_same_loss(volume, image)


def labels_jax(logits, labels, **options):
    loss = lambda x, y: rmi_jax.rmi_loss_from_labels(x, y, num_classes=3, **options)  # noqa: E731
    return jax_value_and_grad(loss, channels_last(logits), labels)


def labels_torch(logits, labels, **options):
    loss = lambda x, y: rmi_torch.rmi_loss_from_labels(x, y, num_classes=3, **options)  # noqa: E731
    return torch_value_and_grad(loss, logits, labels)


LABEL_BACKENDS = {"jax": labels_jax, "torch": labels_torch}


@pytest.mark.parametrize("backend", list(LABEL_BACKENDS))
@pytest.mark.parametrize("pool_way", [0, 1, 2])
@pytest.mark.parametrize("exclude_ignored", [False, True], ids=["ignored-as-is", "excluded"])
def test_a_label_volume_one_slice_deep_is_the_label_map_loss(
    backend, pool_way, exclude_ignored
) -> None:
    run = LABEL_BACKENDS[backend]
    common = dict(rmi_pool_way=pool_way, exclude_ignored=exclude_ignored)
    image = run(
        IMAGE_PRED, IMAGE_LABELS, rmi_radius=3, rmi_pool_size=2, rmi_pool_stride=2, **common
    )
    volume = run(
        as_volume(IMAGE_PRED, 2),
        as_volume(IMAGE_LABELS, 1),
        rmi_radius=(1, 3, 3),
        rmi_pool_size=(1, 2, 2),
        rmi_pool_stride=(1, 2, 2),
        **common,
    )
    assert_same_loss(volume, image)


# Each API called with a prediction of the wrong rank, in each backend.
def _jax_dense_call(x):
    return rmi_jax.rmi_loss(jnp.asarray(x), jnp.asarray(x), with_logits=True)


def _torch_dense_call(x):
    return rmi_torch.rmi_loss(torch.as_tensor(x), torch.as_tensor(x), with_logits=True)


def _jax_labels_call(x):
    labels = jnp.zeros(x.shape[:-1], jnp.int32)
    return rmi_jax.rmi_loss_from_labels(jnp.asarray(x), labels, num_classes=x.shape[-1])


def _torch_labels_call(x):
    labels = torch.zeros((x.shape[0], *x.shape[2:]), dtype=torch.long)
    return rmi_torch.rmi_loss_from_labels(torch.as_tensor(x), labels, num_classes=x.shape[1])


RANK_CALLS = {
    "jax-dense": _jax_dense_call,
    "torch-dense": _torch_dense_call,
    "jax-labels": _jax_labels_call,
    "torch-labels": _torch_labels_call,
}


@pytest.mark.parametrize("call", list(RANK_CALLS))
@pytest.mark.parametrize("shape", [(2, 3, 16), (1, 2, 3, 8, 8, 8)], ids=["rank3", "rank6"])
def test_other_ranks_are_refused_naming_images_and_volumes(call, shape) -> None:
    x = np.zeros(shape, np.float32)
    with pytest.raises(ValueError) as error:
        RANK_CALLS[call](x)
    message = str(error.value)
    assert "rank 4" in message and "rank 5" in message, message
    assert str(shape) in message, message


VOLUME = np.zeros((1, 2, 6, 9, 9), np.float32)
IMAGE = np.zeros((1, 2, 9, 9), np.float32)
# Per-axis options with as many entries as the wrong kind of map (the label map's pooling size
# and stride must also be equal, so both get the same wrong value).
WRONG_LENGTHS = {
    "radius": ({"radius": (3, 3)}, VOLUME, 3),
    "stride": ({"stride": (1, 2, 2)}, IMAGE, 2),
    "rmi_radius": ({"rmi_radius": (3, 3)}, VOLUME, 3),
    "rmi_pool_size": ({"rmi_pool_size": (1, 2), "rmi_pool_stride": (1, 2)}, VOLUME, 3),
    "rmi_pool_stride": ({"rmi_pool_size": (1, 1, 2), "rmi_pool_stride": (1, 1, 2)}, IMAGE, 2),
}


def _call_with(backend: str, options: dict, x: np.ndarray):
    if any(name.startswith("rmi_") for name in options):
        if backend == "jax":
            logits = jnp.asarray(np.moveaxis(x, 1, -1))
            labels = jnp.zeros(logits.shape[:-1], jnp.int32)
            return rmi_jax.rmi_loss_from_labels(logits, labels, num_classes=2, **options)
        labels = torch.zeros((x.shape[0], *x.shape[2:]), dtype=torch.long)
        return rmi_torch.rmi_loss_from_labels(torch.as_tensor(x), labels, num_classes=2, **options)
    if backend == "jax":
        pred = jnp.asarray(np.moveaxis(x, 1, -1))
        return rmi_jax.rmi_loss(pred, pred, with_logits=True, **options)
    pred = torch.as_tensor(x)
    return rmi_torch.rmi_loss(pred, pred, with_logits=True, **options)


@pytest.mark.parametrize("case", list(WRONG_LENGTHS))
def test_per_axis_options_of_the_wrong_length_are_refused_alike(case) -> None:
    options, x, rank = WRONG_LENGTHS[case]
    messages = []
    for backend in ("jax", "torch"):
        with pytest.raises(ValueError) as error:
            _call_with(backend, options, x)
        messages.append(str(error.value))
    assert messages[0] == messages[1], messages
    named = [name for name in options if messages[0].startswith(name)]
    assert named, messages[0]
    assert f"tuple of {rank} ints" in messages[0], messages[0]
    assert str(options[named[0]]) in messages[0], messages[0]


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_per_axis_options_on_images_match_their_int_form(backend) -> None:
    # An int means the same value on every spatial axis, for images as for volumes.
    run = DENSE_BACKENDS[backend]
    as_int = run(IMAGE_PRED, IMAGE_TARGET, None, radius=2, stride=3)
    as_tuple = run(IMAGE_PRED, IMAGE_TARGET, None, radius=(2, 2), stride=(3, 3))
    np.testing.assert_array_equal(as_tuple[0], as_int[0])
    np.testing.assert_array_equal(as_tuple[1], as_int[1])
