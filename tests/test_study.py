"""The multi-seed study (``examples/study.py``) and its texture dataset (``examples/textures.py``).

The smoke run is in the full tier (a subprocess that trains 36 short runs); the texture
dataset's and the summaries' checks are fast.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCS = REPO_ROOT / "docs" / "study.md"
# A smoke run takes under a minute on 2 idle cores; this leaves room for shared, busy ones.
SMOKE_TIMEOUT_S = 600


@pytest.mark.full
def test_quick_study_writes_finite_results_and_leaves_docs_alone(tmp_path: Path) -> None:
    from examples.study import DATASETS, LOSSES, QUICK, TORCH_DATASET, TORCH_LOSSES, TORCH_SEEDS

    docs_before = DOCS.read_bytes() if DOCS.exists() else None
    result = subprocess.run(
        [sys.executable, "examples/study.py", "--quick", "--out", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=SMOKE_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert (DOCS.read_bytes() if DOCS.exists() else None) == docs_before, "--quick wrote docs"
    for figure in ("study.png", "study_curves.png"):
        assert (tmp_path / figure).stat().st_size > 0, figure
    assert "mean IoU" in result.stdout and "Paired differences" in result.stdout

    report = json.loads((tmp_path / "study.json").read_text())
    expected = {
        ("flax", dataset, loss, seed)
        for dataset in DATASETS
        for loss in LOSSES
        for seed in QUICK.seeds
    } | {
        ("torch", TORCH_DATASET, loss, seed)
        for loss in TORCH_LOSSES
        for seed in QUICK.seeds
        if seed in TORCH_SEEDS
    }
    runs = {(r["framework"], r["dataset"], r["loss"], r["seed"]): r for r in report["runs"]}
    assert set(runs) == expected
    for key, run in runs.items():
        num_classes = len(DATASETS[key[1]].class_names)
        metrics = run["metrics"]
        assert len(metrics["iou"]) == len(metrics["boundary_f1"]) == num_classes, key
        scores = [metrics["miou"], metrics["mean_boundary_f1"], *metrics["iou"]]
        assert all(0.0 <= v <= 1.0 for v in scores + metrics["boundary_f1"] if v is not None), key
        assert len(run["losses"]) == QUICK.steps and all(map(math.isfinite, run["losses"])), key
        assert run["step_ms"] > 0 and math.isfinite(run["late_decrease"]), key
        if key[0] == "flax":
            assert len(run["checkpoint_miou"]) == QUICK.checkpoints, key
            assert all(0.0 <= v <= 1.0 for v in run["checkpoint_miou"]), key
            assert run["checkpoint_miou"][-1] == pytest.approx(metrics["miou"], abs=1e-4), key
            diagnostics = run["diagnostics"]
            assert [d["step"] for d in diagnostics] == run["checkpoint_steps"], key
            for d in diagnostics:
                assert all(map(math.isfinite, d["grad_base"] + d["grad_rmi"] + d["corr"])), key
                assert all(0.0 <= v <= 1.0 for v in d["p_own"] + d["p_rival"]), key


def test_texture_mosaics_are_deterministic_and_labelled() -> None:
    pytest.importorskip("skimage")
    from examples.textures import TEXTURE_NAMES, make_mosaics

    images, labels = make_mosaics(32, 48, split="train", seed=3)
    again, labels_again = make_mosaics(32, 48, split="train", seed=3)
    assert images.shape == (32, 48, 48, 3) and images.dtype == np.float32
    assert labels.shape == (32, 48, 48) and labels.dtype == np.int32
    np.testing.assert_array_equal(images, again)
    np.testing.assert_array_equal(labels, labels_again)
    assert set(np.unique(labels)) == set(range(len(TEXTURE_NAMES)))
    # Every image holds a border between two textures, and its channels are the same grey.
    assert all(len(np.unique(image_labels)) >= 2 for image_labels in labels)
    np.testing.assert_array_equal(images[..., 0], images[..., 2])
    assert np.isfinite(images).all()


def test_texture_test_images_are_crops_of_the_held_out_rows_of_their_labels_photograph() -> None:
    pytest.importorskip("skimage")
    from examples.textures import TEST_ROWS, make_mosaics, photographs

    photos = photographs()
    # Each photograph is standardised, so brightness alone does not give its class away.
    np.testing.assert_allclose(photos.mean(axis=(1, 2)), 0.0, atol=STANDARDISED_TOLERANCE)
    np.testing.assert_allclose(photos.std(axis=(1, 2)), 1.0, atol=STANDARDISED_TOLERANCE)
    images, labels = make_mosaics(12, 2 * PATCH, split="test", seed=0)
    corners = [(n, y, x) for n in range(12) for y in (0, PATCH) for x in (0, PATCH)]
    single_texture = [
        (n, y, x)
        for n, y, x in corners
        if len(np.unique(labels[n, y : y + PATCH, x : x + PATCH])) == 1
    ][:PATCHES]
    matched = []
    for n, y, x in single_texture:
        photo = photos[labels[n, y, x]]
        matched += matching_rows(photo, images[n, y : y + PATCH, x : x + PATCH, 0])
    # Patches of one texture in two regions (two gains) match nowhere; the others match where
    # they were cropped: in the photograph of their label, in its held-out rows only.
    assert len(matched) >= PATCHES // 2, matched
    assert min(matched) >= photos.shape[1] - TEST_ROWS


# Float32 rounding of values standardised over a whole photograph: ~1e-6.
STANDARDISED_TOLERANCE = 1e-4
PATCH = 16  # side of the patches searched for in the photographs
PATCHES = 8  # single-texture patches searched for
# A patch that is an affine function of a window correlates with it at 1 but for rounding
# (float32 values: ~1e-6); two different 16x16 windows of a photograph correlate far less.
SAME_WINDOW_CORRELATION = 1.0 - 1e-4


def matching_rows(photo: np.ndarray, patch: np.ndarray) -> list[int]:
    """Top rows of the windows of ``photo`` equal to ``patch`` up to a flip and an affine
    change of grey level (the mosaics' per-region gain and offset): normalised
    cross-correlation 1, from scikit-image's ``match_template``."""
    from skimage.feature import match_template

    rows = []
    for flipped in (patch, patch[::-1], patch[:, ::-1], patch[::-1, ::-1]):
        correlation = match_template(photo.astype(np.float64), flipped.astype(np.float64))
        rows += [int(r) for r in np.argwhere(correlation > SAME_WINDOW_CORRELATION)[:, 0]]
    return rows


def test_late_decrease_is_the_share_of_the_last_fifth() -> None:
    from examples.study import LAST_PART, SMOOTHING_FRACTION, late_decrease

    steps = np.arange(1000)
    # A straight line loses the same amount per step. The smoothed curve runs from the centre of
    # the first 50-step window (step 24.5) to that of the last (974.5), and its late point is
    # the window centred on the 80% mark (step 799.5): its share is the span after that point.
    assert SMOOTHING_FRACTION * len(steps) == 50 and LAST_PART == 0.2
    share = (974.5 - 799.5) / (974.5 - 24.5)
    assert late_decrease(5.0 - 0.004 * steps) == pytest.approx(share, rel=1e-9)
    # A loss that is flat after the first half lost nothing late; shifting or scaling it (RMI
    # terms are negative) changes nothing.
    flat_late = np.where(steps < 500, 1.0 - steps / 500, 0.0)
    assert late_decrease(flat_late) == pytest.approx(0.0, abs=1e-12)
    assert late_decrease(3.0 * flat_late - 7.0) == pytest.approx(0.0, abs=1e-12)


def test_checkpoints_are_evenly_spaced_and_end_at_the_last_step() -> None:
    from examples.study import checkpoint_steps

    assert checkpoint_steps(600, 5) == [120, 240, 360, 480, 600]
    assert checkpoint_steps(4, 2) == [2, 4]
    assert checkpoint_steps(1, 3) == [1]


def test_a_block_is_replaced_between_its_markers_only(tmp_path: Path) -> None:
    from examples.study import RECIPE_MARKERS, replace_block

    start, end = RECIPE_MARKERS
    docs = tmp_path / "study.md"
    docs.write_text(f"before\n{start}\nold\n{end}\nafter\n")
    replace_block(docs, RECIPE_MARKERS, "new")
    assert docs.read_text() == f"before\n{start}\nnew\n{end}\nafter\n"
    docs.write_text(f"{end}\n{start}\n")
    with pytest.raises(ValueError, match="must contain"):
        replace_block(docs, RECIPE_MARKERS, "new")


def test_the_recipe_block_takes_only_runs_comparable_with_the_full_study(tmp_path: Path) -> None:
    import dataclasses

    from examples.study import FULL, QUICK, RECIPE_BASELINE, write_recipe_block

    docs = tmp_path / "study.md"
    docs.write_text("untouched\n")
    quick = {"settings": dataclasses.asdict(QUICK)}
    with pytest.raises(ValueError, match="steps"):
        write_recipe_block(docs, quick)
    no_recipe = {"settings": dataclasses.asdict(FULL) | {"losses": [RECIPE_BASELINE]}}
    with pytest.raises(ValueError, match="recipe"):
        write_recipe_block(docs, no_recipe)
    assert docs.read_text() == "untouched\n"


def test_runs_from_another_instruction_set_or_release_are_not_merged(tmp_path: Path) -> None:
    import dataclasses

    from examples.study import FULL, environment, merge_reports

    def report(seed: int, **machine: object) -> Path:
        path = tmp_path / f"{seed}-{len(machine)}.json"
        run = {"framework": "flax", "dataset": "shapes", "loss": "ce", "seed": seed}
        settings = dataclasses.asdict(FULL) | {"seeds": [seed]}
        path.write_text(
            json.dumps(
                {
                    "command": "study",
                    "settings": settings,
                    "environment": environment() | machine,
                    "wall_time_s": 1.0,
                    "runs": [run],
                }
            )
        )
        return path

    merged = merge_reports([report(0), report(1)])
    assert merged["settings"]["seeds"] == [0, 1]
    assert merged["environment"]["cpu_flags"] == environment()["cpu_flags"]
    with pytest.raises(ValueError, match="cpu_flags"):
        merge_reports([report(0), report(1, cpu_flags=["sse4_2"])])
    with pytest.raises(ValueError, match="versions"):
        merge_reports([report(0), report(1, versions={"jax": "0.0.1"})])


# float32 losses of the same terms summed in another order.
COMBINED_RTOL = 1e-6


def test_a_combined_loss_on_ce_and_dice_is_that_base_until_rmi_comes_in() -> None:
    import jax
    import jax.numpy as jnp

    from examples.study import CANDIDATES, COMPARISONS, Combined, cross_entropy_and_dice

    candidate = CANDIDATES["ce+dice>rmi"]
    logits = jax.random.normal(jax.random.key(0), (2, 16, 16, 4))
    targets = jax.nn.one_hot(jax.random.randint(jax.random.key(1), (2, 16, 16), 0, 4), 4)
    base = cross_entropy_and_dice(logits, targets)
    # Before the ramp the share is 0: the base alone. Later, (1 - s) base + s RMI.
    np.testing.assert_allclose(candidate(logits, targets, 0.1), base, rtol=COMBINED_RTOL)
    np.testing.assert_allclose(Combined("ce+dice", 0.0)(logits, targets), base, rtol=COMBINED_RTOL)
    weighted_base, weighted_rmi = candidate.terms(logits, targets, 0.9)
    np.testing.assert_allclose(weighted_base, 0.8 * base, rtol=COMBINED_RTOL)
    assert float(weighted_rmi) != 0.0 and jnp.isfinite(weighted_rmi)
    assert ("ce+dice>rmi", "ce+dice") in COMPARISONS


def test_the_recipe_s_rmi_term_is_computed_on_full_resolution_maps() -> None:
    import jax

    from examples.study import CANDIDATES, RECIPE, cross_entropy
    from rmi_jax import rmi_loss

    logits = jax.random.normal(jax.random.key(2), (2, 16, 16, 4))
    targets = jax.nn.one_hot(jax.random.randint(jax.random.key(3), (2, 16, 16), 0, 4), 4)
    probabilities = jax.nn.softmax(logits, axis=-1)
    for loss, stride in ((RECIPE, 1), (CANDIDATES["ce>rmi@stride3"], 3)):
        rmi = rmi_loss(probabilities, targets, with_logits=False, bce_weight=0.0, stride=stride)
        # Past the ramp the share is 0.2: 0.8 CE + 0.2 RMI at the loss's own stride.
        expected = 0.8 * cross_entropy(logits, targets) + 0.2 * rmi
        np.testing.assert_allclose(loss(logits, targets, 0.9), expected, rtol=COMBINED_RTOL)


def test_a_block_whose_relus_never_fire_counts_as_dead_and_the_others_do_not() -> None:
    import jax
    from flax import nnx

    from examples.study_mechanism import dead_channel_shares
    from examples.train_flax import UNet

    model = UNet(3, 8, rngs=nnx.Rngs(0))
    images = jax.random.uniform(jax.random.key(1), (4, 16, 16, 3))
    assert tuple(model.features(images)) == UNet.BLOCKS
    # A bias far below any pre-activation switches every channel of dec2's last ReLU off.
    model.dec2.conv2.bias[...] = model.dec2.conv2.bias[...] - 1e6
    shares = dead_channel_shares(model, images)
    assert shares["dec2"] == 1.0
    assert shares["enc1"] < 0.5, shares
