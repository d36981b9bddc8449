"""A reproducible multi-seed study: RMI against the usual segmentation losses, Flax and PyTorch.

For each dataset, loss and seed, train the demos' U-Net from scratch and evaluate it on held-out
images (per-class IoU, mean IoU, mean boundary F1), then report the mean and standard deviation
over the seeds. Within a seed every loss gets the same data, initial weights, batch order and
schedule, so the losses differ in nothing else.

- Datasets: ``shapes``, the demos' synthetic shapes (``examples/synthetic.py``), and
  ``textures``, mosaics of the texture photographs that ship with scikit-image
  (``examples/textures.py``). Both: 512 training and 128 test images of 64x64 per seed.
- Flax losses (:data:`LOSSES`): BCE, BCE + RMI, softmax cross-entropy, cross-entropy + RMI and
  the recipe (:data:`RECIPE`: cross-entropy, then the RMI term ramped in to a small share);
  :data:`CANDIDATES` are the other losses screened for the recipe (``--losses`` runs them).
- The PyTorch twin: BCE and BCE + RMI on ``shapes`` for :data:`TORCH_SEEDS`, trained by the
  PyTorch demo's own ``train``, so that Flax and PyTorch can be compared against the seed spread.
- Each Flax run is evaluated at :attr:`Settings.checkpoints` evenly spaced steps too, to judge
  whether training has flattened; every step is timed (the median is reported per loss).

::

    python examples/study.py                  # the full study (about 90 min on 2 CPU cores);
                                              # rewrites docs/study.md's tables and figures
    python examples/study.py --quick --out /tmp/study   # smoke run, well under a minute
    python examples/study.py --render         # docs again from outputs/study/study.json

Outputs in ``--out`` (default ``outputs/study``): ``study.json`` (settings, machine, every run's
metrics, checkpoints, step times and losses), ``study.png`` (bars with per-seed dots) and
``study_curves.png`` (held-out mean IoU at the checkpoints). A run with the full study's
settings also writes the tables between the markers of ``--docs`` (default
``docs/study.md``) and the two figures beside it; ``--quick`` and any other settings never do.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

# Make ``examples`` importable when the script is run as ``python examples/study.py`` from a
# checkout: only the script's folder is on sys.path then, not the repository root.
REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
if "--quick" in sys.argv[1:]:
    # The smoke run compiles ten train steps to run each a few times: XLA compiles unoptimised
    # code in about half the time (measured 4.8 -> 1.8 s per step function). Read once, when
    # JAX starts its CPU backend, so it is set before the import (a value from the environment
    # wins). The full study keeps XLA's defaults.
    os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks.machine import cpu_flags, cpu_model  # noqa: E402
from examples import textures  # noqa: E402
from examples.common import (  # noqa: E402
    BOUNDARY_TOLERANCE,
    NUM_TEST,
    NUM_TRAIN,
    RUNS,
    Data,
    batch_order,
    load_data,
    train_loop,
)
from examples.metrics import evaluate, mean_iou, per_class_iou, write_json  # noqa: E402
from examples.synthetic import CLASS_NAMES  # noqa: E402
from examples.train_flax import init_state, make_train_step, predict  # noqa: E402
from rmi_jax import rmi_loss  # noqa: E402

#: ``objective(logits [N, H, W, C], one-hot targets [N, H, W, C]) -> scalar loss``
Objective = Callable[[jax.Array, jax.Array], jax.Array]

# The combined losses weigh their two terms equally, as BCE + RMI does (bce_weight=0.5).
CE_WEIGHT = 0.5
DOCS_MARKERS = ("<!-- study:tables:start -->", "<!-- study:tables:end -->")
# The recipe's paired runs (``--recipe-block``): the recipe section's own generated block.
RECIPE_MARKERS = ("<!-- study:recipe:start -->", "<!-- study:recipe:end -->")
# The settings two reports must share for their runs to be compared or merged.
COMPARABLE_SETTINGS = ("steps", "batch_size", "checkpoints", "test_images")
# What else must agree for two runs to be paired: the same seed gives a different model on
# another instruction set or another release (both pick kernels that round differently).
COMPARABLE_MACHINE = ("cpu", "cpu_flags", "versions")
FIGURE_DPI = 80  # the figures are committed under docs/: keep them small
# Training-loss curves are smoothed over this fraction of the run before judging flatness.
SMOOTHING_FRACTION = 0.05
LAST_PART = 0.2  # the share of the run whose loss decrease the flatness column reports
# A class whose held-out IoU ends below this has in effect been dropped by the model (the demos
# showed such runs); the lost-classes table lists them.
LOST_CLASS_IOU = 0.05


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Softmax cross-entropy of the integer labels, averaged over pixels."""
    labels = jnp.argmax(targets, axis=-1)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def cross_entropy_and_dice(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """``0.5 CE + 0.5 Dice``: optax's soft Dice (softmax applied, per image, mean over classes)."""
    dice = optax.losses.dice_loss(logits, targets).mean()
    return CE_WEIGHT * cross_entropy(logits, targets) + (1.0 - CE_WEIGHT) * dice


#: The softmax bases of :class:`Combined`, by name (the names of their runs).
SOFTMAX_BASES: dict[str, Objective] = {
    "ce": cross_entropy,
    "ce+dice": cross_entropy_and_dice,
}


def rmi_ramp(share: float, start: float, end: float) -> optax.Schedule:
    """An RMI share of 0 until ``start``, then linear up to ``share`` at ``end``, then held.

    The schedule's argument is the run's progress (step / total steps), so one recipe fits any
    number of steps; it is an ordinary optax schedule and runs traced inside the jitted step.
    """
    return optax.linear_schedule(0.0, share, transition_steps=end - start, transition_begin=start)


@dataclass(frozen=True)
class Combined:
    """``(1 - s) base + s RMI``: a base loss plus the RMI term with share ``s``.

    ``base`` is ``"bce"`` (RMI on the sigmoids: exactly ``rmi_loss(z, y, bce_weight=1 - s)``) or
    ``"ce"`` (softmax cross-entropy, RMI alone, ``bce_weight=0``, on the softmax probabilities)
    or ``"ce+dice"`` (:func:`cross_entropy_and_dice`, RMI as for ``"ce"``).
    ``share`` is a number or an optax schedule of the run's progress (0 at the first step, 1 at
    the end); :meth:`__call__` takes the progress as a traced scalar. ``stride`` is the RMI
    term's pooling stride (``rmi_loss``'s ``stride``; 1 compares the maps at full resolution).
    """

    base: str
    share: float | optax.Schedule
    stride: int = 3

    @property
    def scheduled(self) -> bool:
        return callable(self.share)

    def share_at(self, progress: jax.typing.ArrayLike) -> jax.Array:
        return jnp.asarray(self.share(progress) if self.scheduled else self.share, jnp.float32)

    def probabilities(self, logits: jax.Array) -> jax.Array:
        """The maps the model predicts: sigmoids for BCE, the softmax for cross-entropy."""
        return jax.nn.sigmoid(logits) if self.base == "bce" else jax.nn.softmax(logits, axis=-1)

    def terms(
        self, logits: jax.Array, targets: jax.Array, progress: jax.typing.ArrayLike = 1.0
    ) -> tuple[jax.Array, jax.Array]:
        """The weighted base and RMI terms, ``(1 - s) base`` and ``s RMI``."""
        s = self.share_at(progress)
        if self.base == "bce":
            bce = rmi_loss(logits, targets, with_logits=True, bce_weight=1.0)
            rmi = rmi_loss(logits, targets, with_logits=True, bce_weight=0.0, stride=self.stride)
        else:
            bce = SOFTMAX_BASES[self.base](logits, targets)
            probabilities = self.probabilities(logits)
            rmi = rmi_loss(
                probabilities, targets, with_logits=False, bce_weight=0.0, stride=self.stride
            )
        return (1.0 - s) * bce, s * rmi

    def __call__(
        self, logits: jax.Array, targets: jax.Array, progress: jax.typing.ArrayLike = 1.0
    ) -> jax.Array:
        if self.base == "bce":
            # One call, as the demos train it; a traced ``bce_weight`` follows the schedule.
            return rmi_loss(
                logits,
                targets,
                with_logits=True,
                bce_weight=1.0 - self.share_at(progress),
                stride=self.stride,
            )
        if not self.scheduled and self.share == 0.0:
            return SOFTMAX_BASES[self.base](logits, targets)
        return sum(self.terms(logits, targets, progress))


#: The recipe's RMI share: 0 for the first 30 % of the run, then linear up to 0.2 at 50 %, held.
RECIPE_SHARE = rmi_ramp(0.2, 0.3, 0.5)
#: The recipe: cross-entropy alone, then the RMI term on the full-resolution maps
#: (``stride=1``) with the share :data:`RECIPE_SHARE` (see docs/study.md for why).
RECIPE = Combined("ce", RECIPE_SHARE, stride=1)
#: The loss the recipe adds RMI to: its paired baseline.
RECIPE_BASELINE = "ce"

#: The Flax runs' losses, by name. ``bce`` and ``bce+rmi`` are the demos' two losses.
LOSSES: dict[str, Callable[..., jax.Array]] = {
    "bce": Combined("bce", 1.0 - RUNS["bce"]),
    "bce+rmi": Combined("bce", 1.0 - RUNS["bce+rmi"]),
    "ce": Combined("ce", 0.0),
    "ce+rmi": Combined("ce", 1.0 - CE_WEIGHT),
    "recipe": RECIPE,
}
#: Candidates screened for the recipe (docs/study.md lists every run); not in the full study.
CANDIDATES: dict[str, Callable[..., jax.Array]] = {
    "ce+rmi@0.1": Combined("ce", 0.1),
    "ce>rmi@0.5": Combined("ce", rmi_ramp(0.5, 0.3, 0.5)),
    "ce>rmi@0.02": Combined("ce", rmi_ramp(0.02, 0.3, 0.5)),
    "ce+dice": cross_entropy_and_dice,
    # Our stand-in for fine-tuning a trained model: cross-entropy for 70 % of the run (past the
    # point where held-out IoU flattens), then RMI at the recipe's share for the rest.
    "finetune": Combined("ce", rmi_ramp(0.2, 0.7, 0.75)),
    # The recipe's schedule on CE + Dice, which trained where CE stalled (textures, seed 5).
    "ce+dice>rmi": Combined("ce+dice", RECIPE_SHARE),
    # The recipe's schedule with RMI on 2x- and 3x-pooled maps (3 is the package default, and
    # the recipe's first version); the recipe compares the maps at full resolution.
    "ce>rmi@stride2": Combined("ce", RECIPE_SHARE, stride=2),
    "ce>rmi@stride3": Combined("ce", RECIPE_SHARE),
    "ce+dice>rmi@stride1": Combined("ce+dice", RECIPE_SHARE, stride=1),
}
ALL_LOSSES = LOSSES | CANDIDATES
#: The PyTorch twin's losses (``rmi_torch.RMILoss`` with these ``bce_weight``) and dataset.
TORCH_LOSSES = ("bce", "bce+rmi")
TORCH_DATASET = "shapes"
#: The seeds the PyTorch twin runs (of those the settings train): a small check, not a study.
TORCH_SEEDS = (0, 1, 2)
#: Paired comparisons reported per seed: (with, without).
COMPARISONS = (
    ("recipe", RECIPE_BASELINE),
    ("bce+rmi", "bce"),
    ("ce+rmi", "ce"),
    # Each candidate against the loss it adds RMI to: its base, else the recipe's baseline.
    *((name, getattr(loss, "base", RECIPE_BASELINE)) for name, loss in CANDIDATES.items()),
    ("ce", "bce"),
)


@dataclass(frozen=True)
class Dataset:
    """How to build one seed's data, and the names of its classes (label order)."""

    load: Callable[[int], Data]
    class_names: tuple[str, ...]


DATASETS: dict[str, Dataset] = {
    "shapes": Dataset(load_data, CLASS_NAMES[:4]),
    "textures": Dataset(textures.load_data, textures.TEXTURE_NAMES),
}


@dataclass(frozen=True)
class Settings:
    """What the study trains: the same for every dataset, loss and seed."""

    steps: int
    batch_size: int
    seeds: tuple[int, ...]
    checkpoints: int  # held-out evaluations per Flax run, evenly spaced, the last at the end
    test_images: int = NUM_TEST  # the first this many of each seed's test images are scored
    datasets: tuple[str, ...] = tuple(DATASETS)
    losses: tuple[str, ...] = tuple(LOSSES)
    torch: bool = True


FULL = Settings(steps=1000, batch_size=8, seeds=(0, 1, 2, 3, 4), checkpoints=5)
QUICK = Settings(steps=4, batch_size=2, seeds=(0, 1), checkpoints=2, test_images=16)


def checkpoint_steps(steps: int, count: int) -> list[int]:
    """``count`` evenly spaced step counts in ``(0, steps]``, the last one ``steps``."""
    return sorted({max(1, round(steps * (k + 1) / count)) for k in range(count)})


@functools.partial(jax.jit, static_argnums=(0, 1))
def _diagnostics(
    graphdef: nnx.GraphDef,
    objective: Callable[..., jax.Array],
    state: nnx.State,
    x: jax.Array,
    y: jax.Array,
    progress: jax.Array,
    test_x: jax.Array,
    test_t: jax.Array,
) -> dict[str, jax.Array]:
    # Gradients are taken w.r.t. the logits, on the training batch of the checkpoint's step:
    # per class, the L2 norm over the batch's pixels of d(weighted term)/d(logits[..., c]).
    model = nnx.merge(graphdef, state)
    out: dict[str, jax.Array] = {}
    if isinstance(objective, Combined):
        logits = model(x)
        for k, name in enumerate(("base", "rmi")):
            g = jax.grad(lambda z, k=k: objective.terms(z, y, progress)[k])(logits)
            out[f"grad_{name}"] = jnp.sqrt(jnp.sum(g**2, axis=(0, 1, 2)))
        out["rmi_share"] = objective.share_at(progress)
        p = objective.probabilities(model(test_x))
    else:
        p = jax.nn.softmax(model(test_x), axis=-1)
    # Held-out maps: how each class's map relates to its target (Pearson correlation over every
    # test pixel, invariant to an affine change of the map, as RMI is) and how large its values
    # are where the class is (its own mean probability against the largest other class's).
    p, t = p.reshape(-1, p.shape[-1]), test_t.reshape(-1, test_t.shape[-1])
    pc, tc = p - p.mean(0), t - t.mean(0)
    out["corr"] = (pc * tc).sum(0) / jnp.sqrt((pc**2).sum(0) * (tc**2).sum(0) + 1e-12)
    n = jnp.maximum(t.sum(0), 1.0)
    out["p_own"] = (p * t).sum(0) / n
    others = jnp.where(t[:, :, None] * 0 + jnp.eye(p.shape[-1])[None] > 0, -jnp.inf, p[:, None, :])
    out["p_rival"] = (others.max(-1) * t).sum(0) / n
    out["p_mean"], out["p_max"] = p.mean(0), p.max(0)
    return out


def run_flax(
    step: Callable,
    data: Data,
    order: np.ndarray,
    seed: int,
    num_classes: int,
    desc: str,
    at: list,
    objective: Callable[..., jax.Array] | None = None,
) -> dict[str, object]:
    """Train one Flax run from ``seed``'s initial weights with the jitted ``step``.

    Returns the run's record: test metrics, held-out mean IoU and per-class IoU after each of
    the step counts ``at``, the loss and wall time of every step (steps that also evaluated are
    not timed) and, with ``objective``, its ``diagnostics`` at each of those steps (per-class
    gradient norms of the base and RMI terms w.r.t. the logits on that step's batch; held-out
    correlation and amplitude of each class's map: see :func:`_diagnostics`).
    """
    graphdef, state = init_state(seed, order.shape[0], num_classes)
    x_all, y_all = jnp.asarray(data.train_x), jnp.asarray(data.train_t)
    test_x = jnp.asarray(data.test_x)
    test_t = jax.nn.one_hot(jnp.asarray(data.test_y), num_classes)
    curve: list[float] = []
    class_curve: list[list[float]] = []
    diagnostics: list[dict[str, object]] = []
    final: list[np.ndarray] = []
    model_graph = nnx.split(nnx.merge(graphdef, state)[0])[0]

    def one_step(i: int) -> float:
        nonlocal state
        x, y = x_all[order[i]], y_all[order[i]]
        if objective is not None and i + 1 in at:
            # The batch of the checkpoint's step, before the step's update.
            model, _ = nnx.merge(graphdef, state)
            d = _diagnostics(
                model_graph,
                objective,
                nnx.state(model),
                x,
                y,
                jnp.float32(i / order.shape[0]),
                test_x,
                test_t,
            )
            diagnostics.append(
                {"step": i + 1} | {k: np.round(np.asarray(v), 5).tolist() for k, v in d.items()}
            )
        state, loss = step(state, x, y)
        if i + 1 in at:
            model, _ = nnx.merge(graphdef, state)
            labels = predict(model, data.test_x)
            curve.append(round(mean_iou(labels, data.test_y, num_classes), 4))
            iou = per_class_iou(labels, data.test_y, num_classes)
            class_curve.append([None if np.isnan(v) else round(float(v), 4) for v in iou])
            final[:] = [labels]
        return float(loss)

    times: list[float] = []
    losses = train_loop(desc, range(order.shape[0]), one_step, step_times=times)
    timed = [t for i, t in enumerate(times) if i > 0 and i + 1 not in at]  # 0 compiles
    record = {
        "metrics": evaluate(final[0], data.test_y, num_classes, BOUNDARY_TOLERANCE),
        "checkpoint_steps": at,
        "checkpoint_miou": curve,
        "checkpoint_iou": class_curve,
        "step_ms": step_time_ms(timed),
        "losses": losses,
    }
    if diagnostics:
        record["diagnostics"] = diagnostics
    return record


def run_torch(loss: str, data: Data, order: np.ndarray, seed: int) -> dict[str, object]:
    """Train one PyTorch run with the PyTorch demo's own ``train`` (``RMILoss(bce_weight=w)``)."""
    from examples.train_torch import train  # imported here: the Flax part runs without torch

    times: list[float] = []
    labels, losses = train(f"{loss} s{seed}", RUNS[loss], data, order, seed, step_times=times)
    return {
        "metrics": evaluate(labels, data.test_y, 4, BOUNDARY_TOLERANCE),
        "step_ms": step_time_ms(times[1:]),  # the first step allocates everything
        "losses": losses,
    }


def step_time_ms(times: Sequence[float]) -> float | None:
    """The median of per-step wall times, in milliseconds (``None`` when nothing was timed)."""
    return round(1e3 * float(np.median(times)), 2) if len(times) else None


def late_decrease(losses: Sequence[float]) -> float:
    """The share of a run's training-loss decrease that came in its last :data:`LAST_PART`.

    Both ends are smoothed (moving average over :data:`SMOOTHING_FRACTION` of the run). The
    ratio ``(L(80%) - L(end)) / (L(start) - L(end))`` does not depend on the loss's scale or
    sign (RMI terms are negative), so it compares across losses: near 0 means flat at the end.
    """
    curve = np.asarray(losses, dtype=np.float64)
    window = max(1, round(SMOOTHING_FRACTION * len(curve)))
    smooth = np.convolve(curve, np.ones(window) / window, mode="valid")
    start, end = smooth[0], smooth[-1]
    late = smooth[min(len(smooth) - 1, round((1.0 - LAST_PART) * len(curve)) - window // 2)]
    return float((late - end) / (start - end)) if start != end else 0.0


def jitted_step(graphdef: nnx.GraphDef, loss: str, steps: int) -> Callable:
    """The jitted training step of the loss named ``loss`` in a run of ``steps`` steps."""
    objective = ALL_LOSSES[loss]
    total_steps = steps if isinstance(objective, Combined) else None
    return jax.jit(make_train_step(graphdef, objective=objective, total_steps=total_steps))


def run_study(settings: Settings) -> list[dict[str, object]]:
    """Every run of the study, as records (see :func:`run_flax`) tagged with what they ran."""
    records: list[dict[str, object]] = []
    start = time.perf_counter()
    at = checkpoint_steps(settings.steps, settings.checkpoints)
    for dataset_name in settings.datasets:
        dataset = DATASETS[dataset_name]
        num_classes = len(dataset.class_names)
        # One jitted step per loss, compiled once and shared by the seeds: the graph does not
        # depend on the seed, only the initial state does.
        graphdef, _ = init_state(settings.seeds[0], settings.steps, num_classes)
        steps = {name: jitted_step(graphdef, name, settings.steps) for name in settings.losses}
        for seed in settings.seeds:
            data = dataset.load(seed)
            data = dataclasses.replace(
                data,
                test_x=data.test_x[: settings.test_images],
                test_y=data.test_y[: settings.test_images],
            )
            order = batch_order(NUM_TRAIN, settings.steps, settings.batch_size, seed)
            runs = [("flax", loss) for loss in settings.losses]
            if settings.torch and dataset_name == TORCH_DATASET and seed in TORCH_SEEDS:
                runs += [("torch", loss) for loss in TORCH_LOSSES]
            for framework, loss in runs:
                t0 = time.perf_counter()
                if framework == "flax":
                    desc = f"flax {dataset_name} {loss} s{seed}"
                    record = run_flax(
                        steps[loss], data, order, seed, num_classes, desc, at, ALL_LOSSES[loss]
                    )
                else:
                    record = run_torch(loss, data, order, seed)
                record["late_decrease"] = round(late_decrease(record["losses"]), 4)
                record["losses"] = [round(v, 5) for v in record["losses"]]
                record["wall_s"] = round(time.perf_counter() - t0, 1)
                records.append(
                    {"framework": framework, "dataset": dataset_name, "loss": loss, "seed": seed}
                    | record
                )
                print(
                    f"{framework} {dataset_name} {loss} seed {seed}: "
                    f"mIoU {record['metrics']['miou']:.3f}, "
                    f"boundary F1 {record['metrics']['mean_boundary_f1']:.3f}, "
                    f"{record['step_ms']} ms/step, {record['wall_s']} s "
                    f"(study so far {time.perf_counter() - start:.0f} s)",
                    flush=True,
                )
    return records


# --- Machine and versions ---------------------------------------------------------------------


def git_commit() -> str | None:
    """The checkout's commit, with ``+changes`` if tracked files differ from it."""
    try:

        def git(*args: str) -> str:
            return subprocess.run(
                ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True
            ).stdout.strip()

        return git("rev-parse", "--short", "HEAD") + (
            "+changes" if git("status", "-uno", "-s") else ""
        )
    except (OSError, subprocess.CalledProcessError):
        return None


def environment() -> dict[str, object]:
    """Where the study ran: CPU, core count, platform, commit and library versions."""
    packages = ("jax", "jaxlib", "flax", "optax", "torch", "numpy", "scikit-image")
    versions = {"python": platform.python_version()}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "commit": git_commit(),
        "versions": versions,
    }


# --- Summaries, tables and figures ------------------------------------------------------------


def values(records: list[dict], key: Callable[[dict], object], **where: object) -> np.ndarray:
    """``key(record)`` for the records matching ``where`` (e.g. ``loss="ce"``), in seed order;
    ``None`` (an undefined metric) becomes NaN."""
    chosen = sorted(
        (r for r in records if all(r[k] == v for k, v in where.items())), key=lambda r: r["seed"]
    )
    return np.array([np.nan if key(r) is None else key(r) for r in chosen], dtype=np.float64)


def mean_std(x: np.ndarray, digits: int = 3, signed: bool = False) -> str:
    """``"mean ± std"`` over the seeds (sample std, ``ddof=1``); ``n/a`` when undefined."""
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return "n/a"
    sign = "+" if signed else ""
    std = float(np.std(x, ddof=1)) if len(x) > 1 else float("nan")
    return f"{np.mean(x):{sign}.{digits}f} ± {std:.{digits}f}"


def miou(r: dict) -> float:
    return r["metrics"]["miou"]


def mean_bf1(r: dict) -> float:
    return r["metrics"]["mean_boundary_f1"]


def metrics_table(records: list[dict], framework: str, dataset: str, losses: Sequence[str]) -> str:
    """Per-class IoU, mean IoU and mean boundary F1 per loss, mean ± std over the seeds."""
    names = DATASETS[dataset].class_names
    head = ["loss", *(f"IoU {n}" for n in names), "**mean IoU**", "**mean boundary F1**"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for loss in losses:
        sel = {"framework": framework, "dataset": dataset, "loss": loss}
        cells = [
            mean_std(values(records, lambda r, c=c: r["metrics"]["iou"][c], **sel))
            for c in range(len(names))
        ]
        cells += [
            f"**{mean_std(values(records, miou, **sel))}**",
            f"**{mean_std(values(records, mean_bf1, **sel))}**",
        ]
        rows.append(f"| {loss} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def comparison_table(records: list[dict], settings: Settings) -> str:
    """Paired differences per seed (same data, weights and batches), mean ± std and each seed."""
    rows = [
        "| dataset | difference | Δ mean IoU | per seed | Δ mean boundary F1 | per seed |",
        "|---|---|---|---|---|---|",
    ]
    for dataset in settings.datasets:
        for with_, without in COMPARISONS:
            if with_ not in settings.losses or without not in settings.losses:
                continue
            # Paired by seed: only the seeds that ran both losses.
            seeds = [
                s
                for s in settings.seeds
                if all(
                    values(records, miou, framework="flax", dataset=dataset, loss=n, seed=s).size
                    for n in (with_, without)
                )
            ]
            if not seeds:
                continue
            cells = []
            for key in (miou, mean_bf1):
                a, b = (
                    np.concatenate(
                        [
                            values(records, key, framework="flax", dataset=dataset, loss=n, seed=s)
                            for s in seeds
                        ]
                    )
                    for n in (with_, without)
                )
                cells += [mean_std(a - b, signed=True), ", ".join(f"{d:+.3f}" for d in a - b)]
            label = f"{with_} − {without}, seeds {', '.join(map(str, seeds))}"
            rows.append(f"| {dataset} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def twin_table(records: list[dict]) -> str:
    """The Flax and PyTorch runs of the twin's losses side by side, mean ± std over the seeds."""
    names = DATASETS[TORCH_DATASET].class_names
    head = ["loss", "framework", *(f"IoU {n}" for n in names), "mean IoU", "mean boundary F1"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for loss in TORCH_LOSSES:
        for framework, label in (("flax", "Flax"), ("torch", "PyTorch")):
            sel = {"framework": framework, "dataset": TORCH_DATASET, "loss": loss}
            cells = [
                mean_std(values(records, lambda r, c=c: r["metrics"]["iou"][c], **sel))
                for c in range(len(names))
            ]
            cells += [
                mean_std(values(records, miou, **sel)),
                mean_std(values(records, mean_bf1, **sel)),
            ]
            rows.append(f"| {loss} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def timing_table(records: list[dict], settings: Settings) -> str:
    """Median ms per training step per loss (median of the seeds' medians) and its ratio to BCE."""
    columns = [("flax", d) for d in settings.datasets]
    if settings.torch and TORCH_DATASET in settings.datasets:
        columns.append(("torch", TORCH_DATASET))
    label = {"flax": "Flax", "torch": "PyTorch"}
    head = ["loss", *(f"{label[f]} {d}: ms/step (× bce)" for f, d in columns)]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for loss in settings.losses:
        cells = []
        for framework, dataset in columns:
            ms = values(
                records, lambda r: r["step_ms"], framework=framework, dataset=dataset, loss=loss
            )
            base = values(
                records, lambda r: r["step_ms"], framework=framework, dataset=dataset, loss="bce"
            )
            if len(ms) == 0:
                cells.append("")
                continue
            ratio = f" ({np.median(ms) / np.median(base):.2f}×)" if len(base) else ""
            cells.append(f"{np.median(ms):.0f}{ratio}")
        rows.append(f"| {loss} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def flatness_table(records: list[dict], settings: Settings) -> str:
    """Held-out mean IoU at the checkpoints and the share of the loss decrease in the last fifth."""
    at = checkpoint_steps(settings.steps, settings.checkpoints)
    head = [
        "dataset",
        "loss",
        *(f"mIoU @ {s}" for s in at),
        "Δ mIoU, last checkpoint interval",
        "loss decrease in the last fifth",
    ]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for dataset in settings.datasets:
        for loss in settings.losses:
            sel = {"framework": "flax", "dataset": dataset, "loss": loss}
            cells = [
                mean_std(values(records, lambda r, k=k: r["checkpoint_miou"][k], **sel))
                for k in range(len(at))
            ]
            if len(at) > 1:
                last = values(
                    records, lambda r: r["checkpoint_miou"][-1] - r["checkpoint_miou"][-2], **sel
                )
                cells.append(mean_std(last, signed=True))
            else:
                cells.append("n/a")
            share = values(records, lambda r: r["late_decrease"], **sel)
            cells.append(mean_std(100 * share, digits=1) + " %")
            rows.append(f"| {dataset} | {loss} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def lost_classes_table(records: list[dict]) -> str:
    """The runs that ended with a class below :data:`LOST_CLASS_IOU`, and those classes."""
    rows = []
    for r in records:
        names = DATASETS[r["dataset"]].class_names
        lost = [
            f"{names[c]} ({v:.3f})"
            for c, v in enumerate(r["metrics"]["iou"])
            if v is not None and v < LOST_CLASS_IOU
        ]
        if lost:
            rows.append(
                f"| {r['framework']} | {r['dataset']} | {r['loss']} | {r['seed']} | "
                + ", ".join(lost)
                + " |"
            )
    if not rows:
        return f"No run ended with a class at an IoU below {LOST_CLASS_IOU}."
    head = "| framework | dataset | loss | seed | classes (IoU) |\n|---|---|---|---|---|"
    return "\n".join([head, *rows])


def per_seed_table(records: list[dict]) -> str:
    """Every run's mean IoU and mean boundary F1, one row per framework, dataset and loss."""
    seeds = sorted({r["seed"] for r in records})
    head = ["framework", "dataset", "loss", *(f"seed {s}: mIoU / mBF1" for s in seeds)]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    groups = dict.fromkeys((r["framework"], r["dataset"], r["loss"]) for r in records)
    for framework, dataset, loss in groups:
        by_seed = {
            r["seed"]: r
            for r in records
            if (r["framework"], r["dataset"], r["loss"]) == (framework, dataset, loss)
        }
        cells = [
            f"{miou(by_seed[s]):.3f} / {mean_bf1(by_seed[s]):.3f}" if s in by_seed else ""
            for s in seeds
        ]
        rows.append(f"| {framework} | {dataset} | {loss} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def settings_of(report: dict) -> Settings:
    """The :class:`Settings` a report (fresh, or read back from JSON) was made with."""
    return Settings(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in report["settings"].items()}
    )


def flags_text(env: dict) -> str:
    """`` [avx avx2 ...]``, the CPU's SIMD flags, or nothing where a report predates them."""
    return f" [{' '.join(env['cpu_flags'])}]" if env.get("cpu_flags") else ""


def render_markdown(report: dict) -> str:
    """The generated part of docs/study.md: settings, machine, every table."""
    settings = settings_of(report)
    records, env = report["runs"], report["environment"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
    parts = [
        f"Generated by `{report['command']}` in {report['wall_time_s'] / 60:.1f} min "
        f"on {env['cpu']}{flags_text(env)} ({env['cores']} cores), {env['platform']}, "
        f"commit {env['commit']}; "
        f"{versions}.",
        "",
        f"Settings: {settings.steps} steps × batch {settings.batch_size} per run "
        f"({settings.steps * settings.batch_size / NUM_TRAIN:.1f} epochs of {NUM_TRAIN} "
        f"training images, 64×64), seeds {', '.join(map(str, settings.seeds))}; every number is "
        "the mean ± standard deviation (ddof = 1) over the seeds, on each seed's "
        f"{settings.test_images} held-out test images.",
    ]
    for dataset in settings.datasets:
        parts += [
            "",
            f"#### {dataset}: Flax, {len(settings.seeds)} seeds",
            "",
            metrics_table(records, "flax", dataset, settings.losses),
        ]
    parts += [
        "",
        f"#### Runs that lost a class (held-out IoU below {LOST_CLASS_IOU})",
        "",
        lost_classes_table(records),
        "",
        "#### Paired differences (same seed: same data, initial weights and batches)",
        "",
        comparison_table(records, settings),
    ]
    if settings.torch and TORCH_DATASET in settings.datasets:
        parts += [
            "",
            f"#### Flax and the PyTorch twin on {TORCH_DATASET}",
            "",
            twin_table(records),
        ]
    parts += [
        "",
        "#### Time per training step (median over the run's steps, median over the seeds)",
        "",
        timing_table(records, settings),
        "",
        "#### Has training flattened? Held-out mean IoU at checkpoints (Flax)",
        "",
        flatness_table(records, settings),
        "",
        "<details><summary>Per-seed values</summary>",
        "",
        per_seed_table(records),
        "",
        "</details>",
    ]
    return "\n".join(parts)


def plot_scores(path: Path, report: dict) -> None:
    """Each seed's score as a dot and the mean ± std over the seeds as a bar with error bars,
    per dataset and metric; the PyTorch twin's runs beside Flax's on its dataset.

    The axes are zoomed to the data: the differences the study is about are a few hundredths.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records, settings = report["runs"], report["settings"]
    datasets = settings["datasets"]
    fig, axes = plt.subplots(2, len(datasets), figsize=(5.2 * len(datasets), 6.6), squeeze=False)
    for col, dataset in enumerate(datasets):
        runs = [("flax", loss) for loss in settings["losses"]]
        if settings["torch"] and dataset == TORCH_DATASET:
            runs += [("torch", loss) for loss in TORCH_LOSSES]
        for row, (key, label) in enumerate(((miou, "mean IoU"), (mean_bf1, "mean boundary F1"))):
            ax = axes[row, col]
            for x, (framework, loss) in enumerate(runs):
                v = values(records, key, framework=framework, dataset=dataset, loss=loss)
                colour = f"C{list(ALL_LOSSES).index(loss)}"
                marker = "s" if framework == "torch" else "o"
                std = np.std(v, ddof=1) if len(v) > 1 else 0.0
                ax.errorbar(x, np.mean(v), yerr=std, fmt="_", color=colour, ms=22, capsize=6, lw=2)
                ax.plot(np.full(len(v), x), v, marker, color=colour, ms=5, mfc="none")
            ax.set_xticks(range(len(runs)))
            ax.set_xticklabels(
                [loss if f == "flax" else f"{loss}\n(PyTorch)" for f, loss in runs],
                fontsize=8,
                rotation=30,
                ha="right",
            )
            ax.set_ylabel(label)
            ax.set_title(f"{dataset}: {label}", fontsize=10)
            ax.grid(axis="y", alpha=0.3)
    fig.suptitle(
        f"{settings['steps']} steps x batch {settings['batch_size']}, seeds "
        f"{', '.join(map(str, settings['seeds']))}\n"
        "open markers: each seed; bar and error bars: mean ± std (Flax: circles, PyTorch: squares)",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=FIGURE_DPI)
    plt.close(fig)


def plot_curves(path: Path, report: dict) -> None:
    """Held-out mean IoU against the step per dataset: each seed's run as a thin line, their
    mean as a thick one (a few runs can sit far from the others, so a band would mislead)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records, settings = report["runs"], report["settings"]
    datasets = settings["datasets"]
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.2 * len(datasets), 3.8), squeeze=False)
    at = checkpoint_steps(settings["steps"], settings["checkpoints"])
    for ax, dataset in zip(axes[0], datasets, strict=True):
        for loss in settings["losses"]:
            sel = {"framework": "flax", "dataset": dataset, "loss": loss}
            curves = values(records, lambda r: r["checkpoint_miou"], **sel)  # [seeds, steps]
            colour = f"C{list(ALL_LOSSES).index(loss)}"
            for curve in curves:
                ax.plot(at, curve, "-", color=colour, lw=0.8, alpha=0.5)
            ax.plot(at, curves.mean(axis=0), "o-", color=colour, lw=2, ms=3, label=loss)
        ax.set_xlabel("training step")
        ax.set_ylabel("held-out mean IoU")
        ax.set_title(f"{dataset} (Flax): thin lines are seeds, thick their mean", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=FIGURE_DPI)
    plt.close(fig)


def replace_block(docs: Path, markers: tuple[str, str], text: str) -> None:
    """Replace what lies between ``markers`` in ``docs`` with ``text``.

    Raises:
        ValueError: ``docs`` does not hold each marker exactly once, start before end.
    """
    content = docs.read_text()
    start, end = markers
    if (
        content.count(start) != 1
        or content.count(end) != 1
        or content.index(start) > content.index(end)
    ):
        raise ValueError(f"{docs} must contain {start} and then {end}, once each")
    before, rest = content.split(start)
    after = rest.split(end)[1]
    docs.write_text(f"{before}{start}\n{text}\n{end}{after}")


def write_docs(docs: Path, report: dict) -> None:
    """Rewrite the block between :data:`DOCS_MARKERS` in ``docs`` and the figures beside it."""
    replace_block(docs, DOCS_MARKERS, render_markdown(report))
    plot_scores(docs.parent / "study.png", report)
    plot_curves(docs.parent / "study_curves.png", report)


def write_recipe_block(docs: Path, report: dict) -> None:
    """Rewrite the block between :data:`RECIPE_MARKERS` in ``docs`` (tables only).

    Raises:
        ValueError: the report's runs are not comparable with the full study's (other steps,
            batch, checkpoints or test images), or it lacks the recipe or its baseline.
    """
    settings = settings_of(report)
    if any(getattr(settings, k) != getattr(FULL, k) for k in COMPARABLE_SETTINGS):
        raise ValueError(f"--recipe-block needs the full study's {', '.join(COMPARABLE_SETTINGS)}")
    if not {"recipe", RECIPE_BASELINE} <= set(settings.losses):
        raise ValueError(f"--recipe-block needs runs of recipe and {RECIPE_BASELINE}")
    replace_block(docs, RECIPE_MARKERS, render_markdown(report))


# --- Command line ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 4 steps, 2 seeds")
    parser.add_argument("--out", type=Path, default=Path("outputs/study"), help="output folder")
    parser.add_argument(
        "--docs",
        type=Path,
        default=REPO_ROOT / "docs" / "study.md",
        help="markdown file whose marked section the full study rewrites",
    )
    parser.add_argument("--no-docs", action="store_true", help="leave --docs untouched")
    parser.add_argument(
        "--recipe-block",
        action="store_true",
        help="write the tables into the recipe block of --docs (runs with the full study's "
        "steps, batch and checkpoints), not the study's block",
    )
    parser.add_argument(
        "--render",
        action="store_true",
        help="no training: rewrite --docs and the figures from <out>/study.json",
    )
    # Calibration: change the settings (a run with other settings than the full study's
    # never writes --docs).
    parser.add_argument("--steps", type=int, help=f"steps per run (full study: {FULL.steps})")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--seeds", type=int, nargs="+")
    parser.add_argument("--checkpoints", type=int, help="held-out evaluations per Flax run")
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS))
    parser.add_argument("--losses", nargs="+", choices=list(ALL_LOSSES))
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch twin")
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="no training: one report from the runs of these study.json files (same steps, "
        "batch, checkpoints and test images), written to <out>/study.json",
    )
    return parser.parse_args(argv)


def merge_reports(paths: Sequence[Path]) -> dict[str, object]:
    """One report holding every run of the study JSONs at ``paths``, which must share the
    settings that make runs comparable; seeds, datasets and losses are the union, in order.

    Raises:
        ValueError: the reports differ in steps, batch size, checkpoints or test images, in
            the CPU (model and SIMD flags) or the library versions, or two of them hold the
            same run.
    """
    reports = [json.loads(Path(p).read_text()) for p in paths]
    first, first_machine = reports[0]["settings"], reports[0]["environment"]
    for path, report in zip(paths, reports, strict=True):
        if any(report["settings"][k] != first[k] for k in COMPARABLE_SETTINGS):
            raise ValueError(
                f"{path}: settings differ from {paths[0]} in one of {COMPARABLE_SETTINGS}"
            )
        machine = report["environment"]
        for key in COMPARABLE_MACHINE:
            if machine.get(key) != first_machine.get(key):
                raise ValueError(
                    f"{path}: ran with {key} {machine.get(key)!r}, {paths[0]} with "
                    f"{first_machine.get(key)!r}; runs from different machines or releases "
                    "are not paired"
                )
    runs = [r for report in reports for r in report["runs"]]
    keys = [(r["framework"], r["dataset"], r["loss"], r["seed"]) for r in runs]
    if len(set(keys)) != len(keys):
        raise ValueError("the reports hold the same run twice")

    def union(name: str) -> list:
        return list(dict.fromkeys(v for report in reports for v in report["settings"][name]))

    settings = dict(first) | {
        "seeds": sorted(union("seeds")),
        "datasets": union("datasets"),
        "losses": union("losses"),
        "torch": any(report["settings"]["torch"] for report in reports),
    }
    commits = sorted({str(report["environment"]["commit"]) for report in reports})
    return {
        "command": f"python examples/study.py --merge <{len(reports)} study.json files>",
        "merged_commands": [report["command"] for report in reports],
        "settings": settings,
        "environment": reports[0]["environment"] | {"commit": ", ".join(commits)},
        "wall_time_s": round(sum(report["wall_time_s"] for report in reports), 1),
        "runs": runs,
    }


def settings_from(args: argparse.Namespace) -> Settings:
    """The full study's settings (or the quick run's), with the command line's changes."""
    base = QUICK if args.quick else FULL
    changes = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "seeds": tuple(args.seeds) if args.seeds else None,
        "checkpoints": args.checkpoints,
        "datasets": tuple(args.datasets) if args.datasets else None,
        "losses": tuple(args.losses) if args.losses else None,
        "torch": False if args.no_torch else None,
    }
    return dataclasses.replace(base, **{k: v for k, v in changes.items() if v is not None})


def main(argv: list[str] | None = None) -> dict[str, object]:
    """Run (or with ``--render`` reload) the study; write JSON and figures, and docs if full."""
    args = parse_args(argv)
    json_path = args.out / "study.json"
    if args.render:
        report = json.loads(json_path.read_text())
    elif args.merge:
        report = merge_reports(args.merge)
        write_json(json_path, report)
    else:
        settings = settings_from(args)
        where = environment()  # before training: the commit is the one the runs import
        start = time.perf_counter()
        records = run_study(settings)
        report = {
            "command": " ".join(
                ["python", "examples/study.py", *(sys.argv[1:] if argv is None else argv)]
            ),
            "settings": dataclasses.asdict(settings),
            "environment": where,
            "wall_time_s": round(time.perf_counter() - start, 1),
            "runs": records,
        }
        write_json(json_path, report)
    plot_scores(args.out / "study.png", report)
    plot_curves(args.out / "study_curves.png", report)
    print(render_markdown(report))
    if args.recipe_block and not args.no_docs:
        write_recipe_block(args.docs, report)
        print(f"\nwrote the recipe block of {args.docs}")
    elif settings_of(report) == FULL and not args.no_docs:
        write_docs(args.docs, report)
        print(f"\nwrote {args.docs} and its figures")
    print(f"wrote {json_path}, {args.out / 'study.png'} and {args.out / 'study_curves.png'}")
    return report


if __name__ == "__main__":
    main()
