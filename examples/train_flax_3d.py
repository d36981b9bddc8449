"""Train a small 3D U-Net in Flax NNX on synthetic volumes: cross-entropy alone against the recipe.

Two runs share the seed, the data, the initial weights and the batch order; they differ only
in the loss. ``ce`` is softmax cross-entropy alone. ``ce+rmi`` is the study's recipe
(docs/study.md): cross-entropy alone for the first 30 % of the steps, then an RMI share ``s``
ramped linearly from 0 to 0.2 between 30 % and 50 % of the run and held, the loss being
``(1 - s) CE + s RMI`` with the RMI term on the softmax probabilities of the
``[N, D, H, W, C]`` logits, over ``1 x 3 x 3`` regions (the slices are thick: see
``examples/synthetic_volumes.py``). ``s`` follows an optax schedule traced inside the jitted
step, so the step compiles once. At the end the script prints per-class IoU, mean IoU and the
in-plane boundary F1 (per slice, 1 voxel tolerance) on held-out volumes for both runs, and
writes the metrics and loss curves as JSON::

    python examples/train_flax_3d.py                    # defaults: about 4 min on 2 CPU cores
    python examples/train_flax_3d.py --steps 3 --out /tmp/smoke

Output: ``<out>/train_flax_3d.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

# Make ``examples`` importable when the script is run as ``python examples/train_flax_3d.py``
# from a checkout: only the script's folder is on sys.path then, not the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from examples.common import BOUNDARY_TOLERANCE, batch_order, schedule_settings, train_loop  # noqa: E402
from examples.metrics import evaluate, format_table, write_json  # noqa: E402
from examples.study import RECIPE_SHARE  # noqa: E402
from examples.synthetic_volumes import CLASS_NAMES, VOXEL_SPACING, make_volumes  # noqa: E402
from examples.train_flax import make_train_step, predict  # noqa: E402
from rmi_jax import rmi_loss  # noqa: E402

NUM_CLASSES = len(CLASS_NAMES)
VOLUME_SHAPE = (16, 32, 32)  # (D, H, W) voxels
NUM_TRAIN = 128
NUM_TEST = 32
WIDTH = 8  # channels of the U-Net's first level; doubled at each level down
DEFAULT_STEPS = 200
DEFAULT_BATCH_SIZE = 4
#: The RMI term's regions and downsampling, per spatial axis ``(D, H, W)``: the slices are
#: twice as thick as a voxel is wide, so they are neither pooled together nor spanned by a
#: region (a ``1 x 3 x 3`` box of ``3 x 3``-pooled cells, ``d = 9``).
RMI_OPTIONS = {"radius": (1, 3, 3), "stride": (1, 3, 3)}
#: The recipe's RMI share as a function of the run's progress (step / total steps).
RMI_SHARE = RECIPE_SHARE


class ConvBlock(nnx.Module):
    """Two convolutions with ReLU (no normalisation, as in the 2D demo), ``kernel`` voxels."""

    def __init__(
        self, c_in: int, c_out: int, kernel: tuple[int, int, int], *, rngs: nnx.Rngs
    ) -> None:
        self.conv1 = nnx.Conv(c_in, c_out, kernel_size=kernel, padding="SAME", rngs=rngs)
        self.conv2 = nnx.Conv(c_out, c_out, kernel_size=kernel, padding="SAME", rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return nnx.relu(self.conv2(nnx.relu(self.conv1(x))))


class UNet3d(nnx.Module):
    """Two levels down, two up, skips by concatenation; ``[N, D, H, W, 1]`` in, logits out.

    Built for the thick slices (voxels ``2 x 1 x 1`` units), as is usual for anisotropic
    scans: the full-resolution level convolves in-plane only (``1 x 3 x 3``) and pools
    in-plane only (``1 x 2 x 2``), which makes the voxels cubes; below it, ``3 x 3 x 3``
    convolutions and ``2 x 2 x 2`` pooling. In-plane kernels also make the costliest level,
    and the run, about a third cheaper on a CPU.
    """

    FACTORS = ((1, 2, 2), (2, 2, 2))  # pooling (and upsampling) factors per level
    KERNELS = ((1, 3, 3), (3, 3, 3))  # convolution kernels: full resolution, below it

    def __init__(self, num_classes: int, width: int, *, rngs: nnx.Rngs) -> None:
        w = width
        (f1, f2), (k1, k2) = self.FACTORS, self.KERNELS
        self.enc1 = ConvBlock(1, w, k1, rngs=rngs)
        self.enc2 = ConvBlock(w, 2 * w, k2, rngs=rngs)
        self.mid = ConvBlock(2 * w, 4 * w, k2, rngs=rngs)
        self.up2 = nnx.ConvTranspose(4 * w, 2 * w, kernel_size=f2, strides=f2, rngs=rngs)
        self.dec2 = ConvBlock(4 * w, 2 * w, k2, rngs=rngs)
        self.up1 = nnx.ConvTranspose(2 * w, w, kernel_size=f1, strides=f1, rngs=rngs)
        self.dec1 = ConvBlock(2 * w, w, k1, rngs=rngs)
        self.head = nnx.Conv(w, num_classes, kernel_size=(1, 1, 1), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        f1, f2 = self.FACTORS
        s1 = self.enc1(x)
        s2 = self.enc2(nnx.max_pool(s1, window_shape=f1, strides=f1))
        h = self.mid(nnx.max_pool(s2, window_shape=f2, strides=f2))
        h = self.dec2(jnp.concatenate([self.up2(h), s2], axis=-1))
        h = self.dec1(jnp.concatenate([self.up1(h), s1], axis=-1))
        return self.head(h)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Softmax cross-entropy of ``[N, D, H, W, C]`` logits and integer labels, voxel mean."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def recipe(logits: jax.Array, labels: jax.Array, progress: jax.Array) -> jax.Array:
    """``(1 - s) CE + s RMI`` with ``s = RMI_SHARE(progress)``, RMI on the softmax probabilities."""
    share = RMI_SHARE(progress)
    probabilities = jax.nn.softmax(logits, axis=-1)
    targets = jax.nn.one_hot(labels, NUM_CLASSES, dtype=probabilities.dtype)
    rmi = rmi_loss(probabilities, targets, with_logits=False, bce_weight=0.0, **RMI_OPTIONS)
    return (1.0 - share) * cross_entropy(logits, labels) + share * rmi


#: Run name -> ``objective(logits, labels, progress)``.
RUNS: dict[str, Callable[[jax.Array, jax.Array, jax.Array], jax.Array]] = {
    "ce": lambda logits, labels, progress: cross_entropy(logits, labels),
    "ce+rmi": recipe,
}


def train(
    name: str, x_train: np.ndarray, y_train: np.ndarray, order: np.ndarray, seed: int
) -> tuple[UNet3d, list[float]]:
    """Train one run from scratch (the same ``seed``: the same initial weights)."""
    steps = order.shape[0]
    # The "rbg" generator: with JAX's default (threefry) each parameter shape's initializer
    # is a separate CPU compilation of several seconds (measured 5-13 s each, about 50 s for
    # this model); rbg's take a fraction of that. It is deterministic for a given seed.
    model = UNet3d(NUM_CLASSES, WIDTH, rngs=nnx.Rngs(jax.random.key(seed, impl="rbg")))
    schedule = optax.warmup_cosine_decay_schedule(**schedule_settings(steps))
    optimizer = nnx.Optimizer(model, optax.adam(schedule), wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))
    step = jax.jit(make_train_step(graphdef, objective=RUNS[name], total_steps=steps))
    x_all, y_all = jnp.asarray(x_train), jnp.asarray(y_train)

    def one_step(i: int) -> float:
        nonlocal state
        state, loss = step(state, x_all[order[i]], y_all[order[i]])
        return float(loss)

    losses = train_loop(f"flax 3d {name:<7}", range(steps), one_step)
    model, _ = nnx.merge(graphdef, state)
    return model, losses


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="training steps per run")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="volumes")
    parser.add_argument("--seed", type=int, default=0, help="data, init and batch-order seed")
    parser.add_argument("--out", type=Path, default=Path("outputs"), help="output folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, dict[str, object]]:
    """Both runs, the metrics table and ``<out>/train_flax_3d.json``."""
    args = parse_args(argv)
    t0 = time.perf_counter()
    # Seeds 2s and 2s + 1: the training and test volumes never coincide.
    x_train, y_train = make_volumes(NUM_TRAIN, VOLUME_SHAPE, seed=2 * args.seed)
    x_test, y_test = make_volumes(NUM_TEST, VOLUME_SHAPE, seed=2 * args.seed + 1)
    order = batch_order(NUM_TRAIN, args.steps, args.batch_size, args.seed)
    results: dict[str, dict[str, object]] = {}
    losses: dict[str, list[float]] = {}
    for name in RUNS:
        model, losses[name] = train(name, x_train, y_train, order, args.seed)
        predicted = predict(model, x_test, batch_size=8)
        # The 2D metrics on the volumes' slices: IoU counts voxels, so it is the volume IoU;
        # the boundary F1 is the in-plane one, contours per slice.
        results[name] = evaluate(
            predicted.reshape(-1, *VOLUME_SHAPE[1:]),
            y_test.reshape(-1, *VOLUME_SHAPE[1:]),
            NUM_CLASSES,
            BOUNDARY_TOLERANCE,
        )
    wall = time.perf_counter() - t0

    d, h, w = VOLUME_SHAPE
    print(
        f"\nflax 3d: {args.steps} steps x batch {args.batch_size}, seed {args.seed}, "
        f"test set of {NUM_TEST} volumes {d}x{h}x{w}, wall time {wall:.1f} s"
    )
    print(format_table(results, CLASS_NAMES))
    path = args.out / "train_flax_3d.json"
    write_json(
        path,
        {
            "framework": "flax",
            "steps": args.steps,
            "batch_size": args.batch_size,
            "seed": args.seed,
            "volume_shape": list(VOLUME_SHAPE),
            "voxel_spacing": list(VOXEL_SPACING),
            "train_volumes": NUM_TRAIN,
            "test_volumes": NUM_TEST,
            "class_names": list(CLASS_NAMES),
            "rmi_options": {k: list(v) for k, v in RMI_OPTIONS.items()},
            "recipe": {"share": 0.2, "ramp_start": 0.3, "ramp_end": 0.5},
            "wall_time_s": round(wall, 1),
            "metrics": results,
            "losses": {k: [round(v, 5) for v in c] for k, c in losses.items()},
        },
    )
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
