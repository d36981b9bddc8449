"""What the Flax and PyTorch training demos share: settings, CLI, schedule, loop and report.

The two demos run the same experiment (same data, batch order, architecture, schedule and
runs) and write the same outputs, so everything that is not framework code lives here and the
scripts only supply "train one run and predict the test set". NumPy only: importing this
module pulls in neither JAX nor PyTorch.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from examples.metrics import evaluate, format_table, plot_comparison, write_json
from examples.synthetic import CLASS_NAMES, make_dataset, one_hot

__all__ = [
    "BOUNDARY_TOLERANCE",
    "DEFAULT_STEPS",
    "IMAGE_SIZE",
    "NUM_CLASSES",
    "NUM_TEST",
    "NUM_TRAIN",
    "PEAK_LR",
    "RUNS",
    "WIDTH",
    "Data",
    "TrainFn",
    "batch_order",
    "data_parallel_parser",
    "gradient_differences",
    "load_data",
    "parse_args",
    "print_run_metrics",
    "run_experiment",
    "schedule_settings",
    "train_loop",
    "warmup_cosine",
]

NUM_CLASSES = 4
IMAGE_SIZE = 64
NUM_TRAIN = 512
NUM_TEST = 128
WIDTH = 16  # channels of the U-Net's first level; doubled at each level down
RUNS = {"bce": 1.0, "bce+rmi": 0.5}  # run name -> bce_weight passed to the loss
PEAK_LR = 3e-3
END_LR_FRACTION = 0.02  # the cosine decays to this fraction of the peak, not to zero
BOUNDARY_TOLERANCE = 1  # pixels; the objects are small, so a 1 px slack is already generous
DEFAULT_STEPS = 300  # measured on 2 shared CPU cores: Flax 3 min 7 s, PyTorch 1 min 42 s
DEFAULT_BATCH_SIZE = 16
DATA_PARALLEL_STEPS = 100  # the data-parallel examples show the mechanics: a short run
RUNNING_LOSS_WINDOW = 20  # steps averaged in the progress bar: one step's loss is too noisy
PLOTTED_EXAMPLES = 4  # test images shown in the figure


@dataclass(frozen=True)
class Data:
    """The demo's arrays, NHWC / NumPy; ``train_t`` is the one-hot target of ``train_y``."""

    train_x: np.ndarray  # float32 [N, H, W, 3]
    train_t: np.ndarray  # float32 [N, H, W, C]
    test_x: np.ndarray  # float32 [M, H, W, 3]
    test_y: np.ndarray  # int32 [M, H, W]


#: ``train(name, bce_weight, data, order, seed) -> (test label maps [M, H, W], loss per step)``
TrainFn = Callable[[str, float, Data, np.ndarray, int], tuple[np.ndarray, list[float]]]


def parse_args(description: str, argv: list[str] | None = None) -> argparse.Namespace:
    """The demos' common flags: ``--steps``, ``--batch-size``, ``--seed``, ``--out``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="training steps per run")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--seed", type=int, default=0, help="data, init and batch-order seed")
    parser.add_argument("--out", type=Path, default=Path("outputs"), help="output folder")
    return parser.parse_args(argv)


def data_parallel_parser(description: str, split_over: str) -> argparse.ArgumentParser:
    """The data-parallel examples' flags: ``--steps``, ``--batch-size``, ``--seed``,
    ``--bce-weight``, ``--check``; ``split_over`` names what the batch is split over."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--steps", type=int, default=DATA_PARALLEL_STEPS, help="training steps")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help=f"global batch, a multiple of the {split_over}",
    )
    parser.add_argument("--seed", type=int, default=0, help="data, init and batch-order seed")
    parser.add_argument("--bce-weight", type=float, default=0.5, help="the loss's bce_weight")
    parser.add_argument(
        "--check",
        action="store_true",
        help=f"only compare one step's loss and gradients, split over the {split_over}, "
        "with the unsplit ones (prints JSON)",
    )
    return parser


def load_data(seed: int) -> Data:
    """Train and test sets from seeds ``2 * seed`` and ``2 * seed + 1``, so they never overlap."""
    train_x, train_y = make_dataset(NUM_TRAIN, IMAGE_SIZE, NUM_CLASSES, seed=2 * seed)
    test_x, test_y = make_dataset(NUM_TEST, IMAGE_SIZE, NUM_CLASSES, seed=2 * seed + 1)
    return Data(train_x, one_hot(train_y, NUM_CLASSES), test_x, test_y)


def batch_order(num_examples: int, steps: int, batch_size: int, seed: int) -> np.ndarray:
    """Indices ``[steps, batch_size]``: epochs of seeded permutations, shared by every run."""
    rng = np.random.default_rng(seed)
    epochs = -(-steps * batch_size // num_examples)
    order = np.concatenate([rng.permutation(num_examples) for _ in range(epochs)])
    return order[: steps * batch_size].reshape(steps, batch_size)


def schedule_settings(steps: int) -> dict[str, float | int]:
    """Keyword arguments of ``optax.warmup_cosine_decay_schedule`` for a run of ``steps``."""
    return {
        "init_value": 0.0,
        "peak_value": PEAK_LR,
        "warmup_steps": max(1, steps // 20),
        "decay_steps": max(2, steps),
        "end_value": PEAK_LR * END_LR_FRACTION,
    }


def warmup_cosine(step: int, steps: int) -> float:
    """Learning rate at ``step`` (from 0): the optax schedule of :func:`schedule_settings`.

    Linear warmup from ``init_value`` to the peak, then a cosine from the peak to
    ``end_value`` over the remaining steps, held there afterwards. Written out so the PyTorch
    demo follows exactly the schedule optax gives the Flax demo.
    """
    s = schedule_settings(steps)
    warmup, peak, end = int(s["warmup_steps"]), float(s["peak_value"]), float(s["end_value"])
    if step < warmup:
        return float(s["init_value"]) + (peak - float(s["init_value"])) * step / warmup
    decay = int(s["decay_steps"]) - warmup
    progress = min(step - warmup, decay) / decay
    return end + (peak - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def train_loop(
    desc: str,
    steps: Iterable[int],
    step_fn: Callable[[int], float],
    *,
    show: bool = True,
    step_times: list[float] | None = None,
) -> list[float]:
    """Call ``step_fn(i)`` for each step under a tqdm bar showing the running loss.

    Args:
        desc: the bar's label.
        steps: the step indices.
        step_fn: runs one step and returns its loss.
        show: ``False`` hides the bar (e.g. on every data-parallel process but the first).
        step_times: if given, each call's wall time in seconds is appended to it.

    Returns:
        The loss ``step_fn`` returned at each step.
    """
    losses: list[float] = []
    bar = tqdm(steps, desc=desc, unit="step", dynamic_ncols=True, disable=not show)
    for i in bar:
        start = time.perf_counter()
        losses.append(step_fn(i))
        if step_times is not None:
            step_times.append(time.perf_counter() - start)
        if i % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-RUNNING_LOSS_WINDOW:]):.4f}")
    bar.set_postfix(loss=f"{np.mean(losses[-RUNNING_LOSS_WINDOW:]):.4f}")
    bar.close()
    return losses


def gradient_differences(
    actual: Sequence[np.ndarray], expected: Sequence[np.ndarray]
) -> dict[str, float]:
    """How far one set of parameter gradients is from another (e.g. data-parallel vs one device).

    Args:
        actual, expected: the gradients of the same parameters, in the same order.

    Returns:
        ``grad_rel_diff``: ``||a - b|| / ||b||`` over all parameters taken together, and
        ``grad_max_leaf_rel_diff``: the worst of that ratio over single parameter arrays.
    """
    a = [np.asarray(g, np.float64).ravel() for g in actual]
    b = [np.asarray(g, np.float64).ravel() for g in expected]
    per_leaf = [np.linalg.norm(u - v) / np.linalg.norm(v) for u, v in zip(a, b, strict=True)]
    a_all, b_all = np.concatenate(a), np.concatenate(b)
    return {
        "grad_rel_diff": float(np.linalg.norm(a_all - b_all) / np.linalg.norm(b_all)),
        "grad_max_leaf_rel_diff": float(max(per_leaf)),
    }


def print_run_metrics(
    title: str, bce_weight: float, labels: np.ndarray, test_y: np.ndarray
) -> dict[str, object]:
    """Evaluate one run's test-set label maps and print its metrics table under ``title``."""
    metrics = evaluate(labels, test_y, NUM_CLASSES, BOUNDARY_TOLERANCE)
    print(f"\n{title}")
    print(format_table({f"bce_weight={bce_weight}": metrics}, CLASS_NAMES[:NUM_CLASSES]))
    return metrics


def run_experiment(
    framework: str,
    model_label: str,
    train: TrainFn,
    argv: list[str] | None = None,
    *,
    description: str = "",
    extra: dict[str, object] | None = None,
) -> dict[str, dict[str, object]]:
    """Run every entry of :data:`RUNS` with ``train``, then print, save and plot the metrics.

    Args:
        framework: short name, used for the output files ``<out>/train_<framework>.{png,json}``.
        model_label: how the figure title names the model (e.g. ``"Flax NNX U-Net"``).
        train: trains one run from scratch and predicts the test set (see :data:`TrainFn`).
        argv: command line (``None``: ``sys.argv``).
        description: the ``--help`` text.
        extra: more entries for the JSON file (e.g. the loss options used).

    Returns:
        Run name -> the metrics dict of :func:`examples.metrics.evaluate`.
    """
    args = parse_args(description, argv)
    t0 = time.perf_counter()
    data = load_data(args.seed)
    order = batch_order(NUM_TRAIN, args.steps, args.batch_size, args.seed)
    results: dict[str, dict[str, object]] = {}
    predictions: dict[str, np.ndarray] = {}
    losses: dict[str, list[float]] = {}
    for name, bce_weight in RUNS.items():
        predictions[name], losses[name] = train(name, bce_weight, data, order, args.seed)
        results[name] = evaluate(predictions[name], data.test_y, NUM_CLASSES, BOUNDARY_TOLERANCE)
    wall = time.perf_counter() - t0

    names = CLASS_NAMES[:NUM_CLASSES]
    print(
        f"\n{framework}: {args.steps} steps x batch {args.batch_size}, seed {args.seed}, "
        f"test set of {NUM_TEST} images, wall time {wall:.1f} s"
    )
    print(format_table(results, names))
    stem = args.out / f"train_{framework}"
    payload: dict[str, object] = {
        "framework": framework,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "class_names": list(names),
        "bce_weight": RUNS,
        "wall_time_s": round(wall, 1),
        **(extra or {}),
        "metrics": results,
        "losses": {k: [round(v, 5) for v in c] for k, c in losses.items()},
    }
    write_json(stem.with_suffix(".json"), payload)
    show = slice(0, PLOTTED_EXAMPLES)
    plot_comparison(
        stem.with_suffix(".png"),
        data.test_x[show],
        data.test_y[show],
        {k: p[show] for k, p in predictions.items()},
        losses,
        NUM_CLASSES,
        title=f"{model_label}, {args.steps} steps, seed {args.seed}: "
        + ", ".join(f"{k} mIoU {r['miou']:.3f}" for k, r in results.items()),
    )
    print(f"wrote {stem.with_suffix('.png')} and {stem.with_suffix('.json')}")
    return results
