"""The NumPy reference checked against facts derived independently of it and of both backends."""

import itertools

import numpy as np
import pytest
import torch

from parity_tests import reference
from parity_tests.baseline_torch import baseline_rmi_loss
from parity_tests.fixtures import Fixture, load_fixtures
from parity_tests.tolerances import F64_SAME_MATH_RTOL, F64_VALUE_RTOL

FIXTURES = load_fixtures()
LABEL_FIXTURES = load_fixtures("labels-*.npz")


def test_closed_form_constant_case() -> None:
    # docs/semantics.md#float32-facts: constant maps give M = 0, so every (n, c) contributes
    # 0.5 * log((sqrt(eps) + 1e-8)^2), about -3.8005 for eps = 5e-4.
    shape = (2, 3, 18, 18)
    for epsilon in (5e-4, 1e-2):
        value = reference.dense_rmi_loss(
            np.full(shape, 0.25),
            np.zeros(shape),
            with_logits=False,
            bce_weight=0.0,
            epsilon=epsilon,
        )
        assert value == pytest.approx(3 * np.log(np.sqrt(epsilon) + 1e-8), rel=1e-12)
    assert np.log(np.sqrt(5e-4) + 1e-8) == pytest.approx(-3.8005, abs=1e-4)


def test_pooling_matches_an_explicit_loop() -> None:
    rng = np.random.default_rng(0)
    maps = rng.random((2, 7, 11))
    for stride in (2, 3, 4):
        pad = stride // 2
        out_h, out_w = reference.pooled_size(7, stride), reference.pooled_size(11, stride)
        for method in ("max", "avg"):
            pooled = reference.pool(maps, stride, method)
            assert pooled.shape == (2, out_h, out_w)
            for i in range(out_h):
                for j in range(out_w):
                    rows = [
                        r for r in range(i * stride - pad, i * stride - pad + stride) if 0 <= r < 7
                    ]
                    cols = [
                        c for c in range(j * stride - pad, j * stride - pad + stride) if 0 <= c < 11
                    ]
                    block = maps[:, rows][:, :, cols]
                    expected = (
                        block.max((1, 2)) if method == "max" else block.sum((1, 2)) / stride**2
                    )
                    np.testing.assert_allclose(pooled[:, i, j], expected, rtol=1e-15)


def test_region_vectors_match_unfold_order() -> None:
    maps = np.arange(2 * 6 * 7, dtype=np.float64).reshape(1, 2, 6, 7)
    for radius, step in ((3, 1), (2, 2), (1, 3)):
        vectors = reference.regions(maps, radius, step)
        windows = torch.nn.functional.unfold(
            torch.tensor(maps), kernel_size=radius, stride=step
        ).view(1, 2, radius * radius, -1)
        np.testing.assert_array_equal(vectors, windows.numpy())


def test_bce_routes_agree_on_moderate_inputs() -> None:
    rng = np.random.default_rng(1)
    x, y = 3 * rng.standard_normal(100), rng.random(100)
    np.testing.assert_allclose(
        reference.bce_with_logits(x, y),
        reference.bce_with_probabilities(reference.sigmoid(x), y),
        rtol=1e-12,
    )
    # The probability route clamps each log term at -100, as PyTorch does.
    assert reference.bce_with_probabilities(np.array([0.0]), np.array([1.0]))[0] == 100.0


def test_lower_bound_equals_schur_complement_identity() -> None:
    # logdet(M + eps I) = logdet(J) - logdet(Spp + eps I) for the joint Gram matrix J
    # (docs/semantics.md#the-joint-matrix-and-its-schur-complement).
    rng = np.random.default_rng(2)
    p, y = rng.random((4, 9, 50)), rng.random((4, 9, 50))
    eps = 5e-4
    bound = reference.lower_bound(p, y, eps, use_log_trace=False)
    z = np.concatenate([p, y], axis=1)
    z = z - z.mean(-1, keepdims=True)
    joint = z @ np.swapaxes(z, -1, -2) + eps * np.eye(18)
    spp = joint[:, :9, :9]
    expected = 0.5 * (np.linalg.slogdet(joint)[1] - np.linalg.slogdet(spp)[1]) / 9
    np.testing.assert_allclose(bound, expected, rtol=1e-10)


BASELINE_COMPARABLE = [
    f
    for f in FIXTURES
    if f.options["with_logits"]
    and f.valid_mask is None
    and f.options.get("downsampling_method", "max") == "max"
    and f.options.get("use_log_trace", True)
]


@pytest.mark.parametrize("fixture", BASELINE_COMPARABLE, ids=str)
def test_reference_matches_the_literal_torch_algorithm(fixture: Fixture) -> None:
    options = {k: v for k, v in fixture.options.items() if k != "with_logits"}
    baseline = baseline_rmi_loss(
        torch.tensor(fixture.pred), torch.tensor(fixture.target), double=True, **options
    )
    np.testing.assert_allclose(fixture.value, baseline.item(), rtol=F64_VALUE_RTOL, atol=0)


@pytest.mark.parametrize("fixture", FIXTURES, ids=str)
def test_fixture_is_reproduced_by_the_reference(fixture: Fixture) -> None:
    per_example = reference.dense_rmi_per_example(
        fixture.pred, fixture.target, **fixture.options, valid_mask=fixture.valid_mask
    )
    # Not bit for bit: NumPy's and BLAS's releases may order the same float64 sums differently
    # (NumPy 1.26 against the fixtures' 2.x differs by up to 4e-13).
    np.testing.assert_allclose(
        per_example, fixture.per_example, rtol=F64_SAME_MATH_RTOL, atol=F64_SAME_MATH_RTOL
    )
    assert np.isfinite(fixture.value)
    assert fixture.value == pytest.approx(per_example.mean(), rel=1e-15)


def test_fixtures_cover_every_option_that_changes_the_math() -> None:
    seen: dict[str, set] = {}
    for fixture in FIXTURES:
        for key, value in fixture.options.items():
            seen.setdefault(key, set()).add(value)
    assert seen["with_logits"] == {True, False}
    assert {1, 2, 3, 4} <= seen["radius"] | {3}
    assert {0.0, 1.0} <= seen["bce_weight"]
    assert {"avg", "region-extraction"} <= seen["downsampling_method"]
    assert {1, 2, 4} <= seen["stride"]
    assert False in seen["use_log_trace"]
    assert sum(f.grad_fd is not None for f in FIXTURES) >= 8
    masked = [f for f in FIXTURES if f.valid_mask is not None]
    assert {f.options.get("downsampling_method", "max") for f in masked} == {
        "max",
        "avg",
        "region-extraction",
    }
    assert any(f.grad_fd is not None for f in masked)


@pytest.mark.parametrize("fixture", [f for f in FIXTURES if f.grad_fd is not None], ids=str)
def test_differenced_gradient_is_not_zero(fixture: Fixture) -> None:
    # A gradient that is zero by the definition leaves each backend with its own rounding
    # noise, and the relative difference of two noises means nothing (a per-pixel random
    # target max-pooled by 3 is all ones, which makes the RMI term constant).
    assert np.abs(fixture.grad_fd).max() > 1e-6


def test_masking_a_rectangle_equals_cropping_to_it() -> None:
    """The mask semantics, checked without the mask code: at stride 1 the windows of valid
    pixels inside a rectangle are exactly the windows of the cropped image."""
    rng = np.random.default_rng(7)
    pred = rng.standard_normal((1, 2, 14, 13))
    target = (rng.random(pred.shape) < 0.5).astype(np.float64)
    mask = np.zeros((1, 14, 13), bool)
    mask[0, 3:12, 2:9] = True
    options = {"with_logits": True, "stride": 1}
    masked = reference.dense_rmi_per_example(pred, target, valid_mask=mask, **options)
    cropped = reference.dense_rmi_per_example(
        pred[..., 3:12, 2:9], target[..., 3:12, 2:9], **options
    )
    np.testing.assert_allclose(masked, cropped, rtol=1e-12)


def test_pooled_cell_is_masked_when_any_pixel_under_it_is() -> None:
    rng = np.random.default_rng(8)
    pred = rng.standard_normal((1, 1, 12, 12))
    mask = np.ones((1, 12, 12), bool)
    mask[0, 5, 5] = False  # stride 3, padding 1: pooled cell (2, 2) covers rows/cols 5-7
    _, _, weights = reference.dense_regions(
        pred,
        pred,
        with_logits=True,
        radius=1,
        downsampling_method="max",
        stride=3,
        valid_mask=mask,
    )
    cells = weights.reshape(4, 4)
    assert cells[2, 2] == 0 and cells.sum() == 15


@pytest.mark.parametrize("fixture", LABEL_FIXTURES, ids=str)
def test_label_fixture_is_reproduced_by_the_reference(fixture: Fixture) -> None:
    value = reference.label_rmi_loss(fixture.pred, fixture.target, **fixture.options)
    np.testing.assert_allclose(value, fixture.value, rtol=F64_SAME_MATH_RTOL, atol=0)


# --- Any spatial rank, per-axis sizes ---------------------------------------------------------


def test_per_axis_normalises_ints_and_checks_tuples() -> None:
    assert reference.per_axis(3, 3) == (3, 3, 3)
    assert reference.per_axis((1, 2, 3), 3) == (1, 2, 3)
    assert reference.per_axis(np.int64(2), 2) == (2, 2)
    with pytest.raises(ValueError, match="one per spatial axis"):
        reference.per_axis((2, 2), 3)
    with pytest.raises(TypeError):
        reference.per_axis(2.5, 2)


def loop_pool(maps: np.ndarray, stride: tuple[int, ...], method: str) -> np.ndarray:
    """Pool ``[B, *S]`` cell by cell: the pixels of each window, padding left out (a max never
    picks it; the average still divides by the full window)."""
    spatial = maps.shape[1:]
    shape = tuple(reference.pooled_size(n, s) for n, s in zip(spatial, stride, strict=True))
    out = np.empty(maps.shape[:1] + shape)
    for cell in itertools.product(*map(range, shape)):
        pixels = [
            [q for q in range(i * s - s // 2, i * s - s // 2 + s) if 0 <= q < n]
            for i, s, n in zip(cell, stride, spatial, strict=True)
        ]
        block = maps[(slice(None), *np.ix_(*pixels))].reshape(len(maps), -1)
        out[(slice(None), *cell)] = (
            block.max(1) if method == "max" else block.sum(1) / np.prod(stride)
        )
    return out


@pytest.mark.parametrize("stride", [(1, 2, 3), (2, 2, 2), (3, 1, 2)])
@pytest.mark.parametrize("method", ["max", "avg"])
def test_volume_pooling_matches_an_explicit_loop(stride, method) -> None:
    maps = np.random.default_rng(10).random((2, 5, 7, 8))
    pooled = reference.pool(maps, stride, method)
    np.testing.assert_allclose(pooled, loop_pool(maps, stride, method), rtol=1e-15, atol=0)
    if len(set(stride)) == 1:  # an int with the spatial rank named is the same pooling
        np.testing.assert_array_equal(
            reference.pool(maps, stride[0], method, spatial_rank=3), pooled
        )


def loop_regions(maps: np.ndarray, radius: tuple[int, ...], step: tuple[int, ...]):
    """``[..., *S]`` -> ``[..., d, L]`` window by window: windows row-major, the entries of
    each row-major over its offsets."""
    spatial = maps.shape[-len(radius) :]
    starts = [range(0, n - r + 1, s) for n, r, s in zip(spatial, radius, step, strict=True)]
    columns = []
    for start in itertools.product(*starts):
        entries = [
            maps[(..., *(b + o for b, o in zip(start, offset, strict=True)))]
            for offset in itertools.product(*map(range, radius))
        ]
        columns.append(np.stack(entries, axis=-1))
    return np.stack(columns, axis=-1)


@pytest.mark.parametrize(
    ("radius", "step"), [((2, 1, 3), (1, 1, 1)), ((1, 2, 2), (1, 2, 3)), ((3, 3, 3), (2, 1, 2))]
)
def test_volume_region_vectors_match_an_explicit_loop(radius, step) -> None:
    maps = np.arange(2 * 2 * 5 * 6 * 7, dtype=np.float64).reshape(2, 2, 5, 6, 7)
    vectors = reference.regions(maps, radius, step)
    assert vectors.shape[-2] == np.prod(radius)
    np.testing.assert_array_equal(vectors, loop_regions(maps, radius, step))


def test_per_axis_image_regions_equal_explicit_windows() -> None:
    """radius=(2, 3): the region vectors are the explicitly built 2x3 windows, and the loss is
    the one computed from those windows by the Schur-complement identity."""
    rng = np.random.default_rng(11)
    pred = rng.standard_normal((2, 2, 9, 11))
    target = (rng.random(pred.shape) < 0.4).astype(np.float64)
    eps = 5e-4
    for stride, method in ((1, "max"), ((2, 1), "region-extraction")):
        step = reference.per_axis(stride, 2) if method == "region-extraction" else (1, 1)
        p = loop_regions(reference.sigmoid(pred), (2, 3), step)
        y = loop_regions(target, (2, 3), step)
        np.testing.assert_array_equal(reference.regions(target, (2, 3), step), y)
        z = np.concatenate([p, y], axis=-2)
        z = z - z.mean(-1, keepdims=True)
        joint = z @ np.swapaxes(z, -1, -2) + eps * np.eye(12)
        log_det = np.linalg.slogdet(joint)[1] - np.linalg.slogdet(joint[..., :6, :6])[1]
        expected = (0.5 * log_det / 6).sum(axis=1)
        value = reference.dense_rmi_per_example(
            pred,
            target,
            with_logits=True,
            radius=(2, 3),
            bce_weight=0.0,
            downsampling_method=method,
            stride=stride,
            use_log_trace=False,
            epsilon=eps,
        )
        np.testing.assert_allclose(value, expected, rtol=1e-10)


@pytest.mark.parametrize("method", ["max", "avg", "region-extraction"])
@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
def test_dense_volume_of_depth_one_equals_the_image(method, masked) -> None:
    rng = np.random.default_rng(12)
    pred = rng.standard_normal((2, 2, 1, 13, 12))
    target = (rng.random(pred.shape) < 0.5).astype(np.float64)
    mask = None
    if masked:
        mask = np.ones((2, 1, 13, 12), bool)
        mask[0, 0, 4, 5] = mask[1, 0, 10, 2] = mask[1, 0, 0, 0] = False
    for radius, stride in ((2, 3), (3, 2)):
        volume = reference.dense_rmi_per_example(
            pred,
            target,
            with_logits=True,
            radius=(1, radius, radius),
            downsampling_method=method,
            stride=(1, stride, stride),
            valid_mask=mask,
        )
        image = reference.dense_rmi_per_example(
            pred[:, :, 0],
            target[:, :, 0],
            with_logits=True,
            radius=radius,
            downsampling_method=method,
            stride=stride,
            valid_mask=None if mask is None else mask[:, 0],
        )
        np.testing.assert_array_equal(volume, image)


@pytest.mark.parametrize("pool_way", [0, 1, 2])
@pytest.mark.parametrize("exclude_ignored", [False, True])
def test_label_volume_of_depth_one_equals_the_image(pool_way, exclude_ignored) -> None:
    rng = np.random.default_rng(13)
    labels = rng.integers(0, 3, (2, 1, 12, 13))
    labels[0, 0, 3, 4] = labels[1, 0, 9, 9] = 255
    logits = 2.0 * rng.standard_normal((2, 3, 1, 12, 13))
    options = {"num_classes": 3, "rmi_pool_way": pool_way, "exclude_ignored": exclude_ignored}
    volume = reference.label_rmi_loss(
        logits,
        labels,
        rmi_radius=(1, 2, 2),
        rmi_pool_size=(1, 2, 2),
        rmi_pool_stride=(1, 2, 2),
        **options,
    )
    image = reference.label_rmi_loss(
        logits[:, :, 0],
        labels[:, 0],
        rmi_radius=2,
        rmi_pool_size=2,
        rmi_pool_stride=2,
        **options,
    )
    assert volume == image


def test_label_pool_size_is_compared_per_axis() -> None:
    rng = np.random.default_rng(14)
    logits, labels = rng.standard_normal((1, 2, 6, 6, 6)), rng.integers(0, 2, (1, 6, 6, 6))
    options = {"num_classes": 2, "rmi_radius": 2}
    same = reference.label_rmi_loss(logits, labels, rmi_pool_size=2, rmi_pool_stride=2, **options)
    assert same == reference.label_rmi_loss(
        logits, labels, rmi_pool_size=(2, 2, 2), rmi_pool_stride=2, **options
    )
    with pytest.raises(ValueError, match="pool size == stride"):
        reference.label_rmi_loss(
            logits, labels, rmi_pool_size=(1, 2, 2), rmi_pool_stride=2, **options
        )


def test_volume_resizing_matches_torch_interpolate() -> None:
    rng = np.random.default_rng(15)
    maps = rng.random((2, 3, 5, 7, 6))
    for size in ((3, 4, 9), (1, 7, 2), (5, 3, 6)):
        expected = torch.nn.functional.interpolate(
            torch.tensor(maps), size=size, mode="trilinear", align_corners=True
        )
        resized = reference.resize_multilinear_corners(maps, size)
        np.testing.assert_allclose(resized, expected.numpy(), rtol=1e-14, atol=1e-15)
    # 106 -> 26 is a size where exact arithmetic reads another source than PyTorch's float32
    # rule. The rule is float32's: PyTorch 2.13's 3-D kernel indexes float64 maps in float64
    # (and reads 53, not 52, for output 13), so the maps are float32 (copied exactly).
    for shape, size in (((1, 2, 106, 4, 7), (26, 3, 5)), ((2, 1, 5, 7, 6), (2, 7, 4))):
        maps = rng.random(shape).astype(np.float32)
        expected = torch.nn.functional.interpolate(torch.tensor(maps), size=size, mode="nearest")
        np.testing.assert_array_equal(reference.resize_nearest(maps, size), expected.numpy())


def test_image_resizing_keeps_its_two_int_form() -> None:
    maps = np.random.default_rng(16).random((2, 3, 10, 9))
    for resize in (reference.resize_nearest, reference.resize_bilinear_corners):
        np.testing.assert_array_equal(resize(maps, 4, 3), resize(maps, (4, 3)))
    expected = torch.nn.functional.interpolate(
        torch.tensor(maps), size=(4, 3), mode="bilinear", align_corners=True
    )
    np.testing.assert_allclose(
        reference.resize_bilinear_corners(maps, 4, 3), expected.numpy(), rtol=1e-14, atol=1e-15
    )


def test_masking_a_box_of_a_volume_equals_cropping_to_it() -> None:
    rng = np.random.default_rng(17)
    pred = rng.standard_normal((1, 2, 6, 7, 8))
    target = (rng.random(pred.shape) < 0.5).astype(np.float64)
    mask = np.zeros((1, 6, 7, 8), bool)
    mask[0, 1:5, 2:7, 1:6] = True
    options = {"with_logits": True, "stride": 1, "radius": (2, 3, 2)}
    masked = reference.dense_rmi_per_example(pred, target, valid_mask=mask, **options)
    box = (..., slice(1, 5), slice(2, 7), slice(1, 6))
    cropped = reference.dense_rmi_per_example(pred[box], target[box], **options)
    np.testing.assert_allclose(masked, cropped, rtol=1e-12)
