"""The NumPy reference checked against facts derived independently of it and of both backends."""

import numpy as np
import pytest
import torch

from parity_tests import reference
from parity_tests.baseline_torch import baseline_rmi_loss
from parity_tests.fixtures import Fixture, load_fixtures
from parity_tests.tolerances import F64_SAME_MATH_RTOL, F64_VALUE_RTOL

FIXTURES = load_fixtures()


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
