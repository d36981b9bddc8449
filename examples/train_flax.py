"""Train a small U-Net in Flax NNX on synthetic shapes, with BCE alone and with BCE + RMI.

Two runs share the seed, the data, the initial weights and the batch order; they differ only
in the loss: ``rmi_loss(..., bce_weight=1.0)`` (pure BCE, the RMI term has weight 0) versus
``bce_weight=0.5`` (the reference default: half BCE, half RMI). At the end the script prints
per-class IoU, mean IoU and boundary F1 on a held-out synthetic test set for both runs, and
writes a figure and the metrics as JSON::

    python examples/train_flax.py                    # defaults: about 2-3 min on 2 CPU cores
    python examples/train_flax.py --steps 3 --out /tmp/smoke

Outputs: ``<out>/train_flax.png`` and ``<out>/train_flax.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# Make ``examples`` importable when the script is run as ``python examples/train_flax.py``
# from a checkout: only the script's folder is on sys.path then, not the repository root.
_REPO_ROOT = Path(__file__).resolve().parents[1]
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from tqdm import tqdm  # noqa: E402

from examples.metrics import evaluate, format_table, plot_comparison, write_json  # noqa: E402
from examples.synthetic import CLASS_NAMES, make_dataset, one_hot  # noqa: E402
from rmi_jax import rmi_loss  # noqa: E402

NUM_CLASSES = 4
IMAGE_SIZE = 64
NUM_TRAIN = 512
NUM_TEST = 128
WIDTH = 16  # channels of the first level; doubled at each level down
RUNS = {"bce": 1.0, "bce+rmi": 0.5}  # run name -> bce_weight passed to rmi_loss
PEAK_LR = 3e-3
BOUNDARY_TOLERANCE = 1  # pixels; the objects are small, so a 1 px slack is already generous


class ConvBlock(nnx.Module):
    """Two 3x3 convolutions with ReLU (no normalisation: keeps the two frameworks identical)."""

    def __init__(self, c_in: int, c_out: int, *, rngs: nnx.Rngs) -> None:
        self.conv1 = nnx.Conv(c_in, c_out, kernel_size=(3, 3), padding="SAME", rngs=rngs)
        self.conv2 = nnx.Conv(c_out, c_out, kernel_size=(3, 3), padding="SAME", rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return nnx.relu(self.conv2(nnx.relu(self.conv1(x))))


class UNet(nnx.Module):
    """Two levels down, two up, skip connections by concatenation; NHWC in, logits out."""

    def __init__(self, num_classes: int, width: int, *, rngs: nnx.Rngs) -> None:
        w = width
        self.enc1 = ConvBlock(3, w, rngs=rngs)
        self.enc2 = ConvBlock(w, 2 * w, rngs=rngs)
        self.mid = ConvBlock(2 * w, 4 * w, rngs=rngs)
        # Transposed 2x2 stride-2 convolutions halve the channels while upsampling, so the
        # decoder convolutions after the concatenation stay cheap.
        self.up2 = nnx.ConvTranspose(4 * w, 2 * w, kernel_size=(2, 2), strides=(2, 2), rngs=rngs)
        self.dec2 = ConvBlock(4 * w, 2 * w, rngs=rngs)
        self.up1 = nnx.ConvTranspose(2 * w, w, kernel_size=(2, 2), strides=(2, 2), rngs=rngs)
        self.dec1 = ConvBlock(2 * w, w, rngs=rngs)
        self.head = nnx.Conv(w, num_classes, kernel_size=(1, 1), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        def pool(h: jax.Array) -> jax.Array:
            return nnx.max_pool(h, window_shape=(2, 2), strides=(2, 2))

        s1 = self.enc1(x)
        s2 = self.enc2(pool(s1))
        h = self.mid(pool(s2))
        h = self.dec2(jnp.concatenate([self.up2(h), s2], axis=-1))
        h = self.dec1(jnp.concatenate([self.up1(h), s1], axis=-1))
        return self.head(h)


def batch_order(num_examples: int, steps: int, batch_size: int, seed: int) -> np.ndarray:
    """Indices ``[steps, batch_size]``: epochs of seeded permutations, shared by both runs."""
    rng = np.random.default_rng(seed)
    epochs = -(-steps * batch_size // num_examples)
    order = np.concatenate([rng.permutation(num_examples) for _ in range(epochs)])
    return order[: steps * batch_size].reshape(steps, batch_size)


def train_one(
    name: str,
    bce_weight: float,
    images: np.ndarray,
    targets: np.ndarray,
    order: np.ndarray,
    seed: int,
) -> tuple[UNet, list[float]]:
    """Train a fresh U-Net (same init for every run via ``seed``); return it and its losses."""
    steps = order.shape[0]
    model = UNet(NUM_CLASSES, WIDTH, rngs=nnx.Rngs(seed))
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=PEAK_LR,
        warmup_steps=max(1, steps // 20),
        decay_steps=max(2, steps),
        end_value=PEAK_LR * 0.02,
    )
    optimizer = nnx.Optimizer(model, optax.adam(schedule), wrt=nnx.Param)

    # Split once and jit a pure function of the state: cheaper per step than nnx.jit, whose
    # graph traversal on every call is noticeable for a model this small on CPU.
    graphdef, state = nnx.split((model, optimizer))

    @jax.jit
    def step(state: nnx.State, x: jax.Array, y: jax.Array) -> tuple[nnx.State, jax.Array]:
        model, optimizer = nnx.merge(graphdef, state)

        def loss_fn(model: UNet) -> jax.Array:
            return rmi_loss(model(x), y, with_logits=True, bce_weight=bce_weight)

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), loss

    x_all, y_all = jnp.asarray(images), jnp.asarray(targets)
    losses: list[float] = []
    bar = tqdm(range(steps), desc=f"flax {name:<8}", unit="step", dynamic_ncols=True)
    for i in bar:
        idx = order[i]
        state, loss = step(state, x_all[idx], y_all[idx])
        losses.append(float(loss))
        if i % 10 == 0 or i == steps - 1:
            # Running mean over the last 20 steps: one step's loss is too noisy to read.
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
    model, _ = nnx.merge(graphdef, state)
    return model, losses


def predict(model: UNet, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Argmax label maps ``[N, H, W]`` for ``images`` ``[N, H, W, 3]``."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def labels(state: nnx.State, x: jax.Array) -> jax.Array:
        return jnp.argmax(nnx.merge(graphdef, state)(x), axis=-1)

    out = [
        labels(state, jnp.asarray(images[i : i + batch_size]))
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate([np.asarray(o) for o in out])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps per run")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0, help="data, init and batch-order seed")
    parser.add_argument("--out", type=Path, default=Path("outputs"), help="output folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = parse_args(argv)
    t0 = time.perf_counter()
    # Different seeds for the train and test sets, derived from --seed, so they never overlap.
    train_x, train_y = make_dataset(NUM_TRAIN, IMAGE_SIZE, NUM_CLASSES, seed=2 * args.seed)
    test_x, test_y = make_dataset(NUM_TEST, IMAGE_SIZE, NUM_CLASSES, seed=2 * args.seed + 1)
    train_t = one_hot(train_y, NUM_CLASSES)
    order = batch_order(NUM_TRAIN, args.steps, args.batch_size, args.seed)

    results: dict[str, dict[str, object]] = {}
    predictions: dict[str, np.ndarray] = {}
    losses: dict[str, list[float]] = {}
    for name, bce_weight in RUNS.items():
        model, losses[name] = train_one(name, bce_weight, train_x, train_t, order, args.seed)
        predictions[name] = predict(model, test_x)
        results[name] = evaluate(predictions[name], test_y, NUM_CLASSES, BOUNDARY_TOLERANCE)
    wall = time.perf_counter() - t0

    names = CLASS_NAMES[:NUM_CLASSES]
    print(
        f"\nflax: {args.steps} steps x batch {args.batch_size}, seed {args.seed}, "
        f"test set of {NUM_TEST} images, wall time {wall:.1f} s"
    )
    print(format_table(results, names))
    stem = args.out / "train_flax"
    write_json(
        stem.with_suffix(".json"),
        {
            "framework": "flax",
            "steps": args.steps,
            "batch_size": args.batch_size,
            "seed": args.seed,
            "class_names": list(names),
            "bce_weight": RUNS,
            "wall_time_s": round(wall, 1),
            "metrics": results,
            "losses": {k: [round(v, 5) for v in c] for k, c in losses.items()},
        },
    )
    show = slice(0, 4)
    plot_comparison(
        stem.with_suffix(".png"),
        test_x[show],
        test_y[show],
        {k: p[show] for k, p in predictions.items()},
        losses,
        NUM_CLASSES,
        title=f"Flax NNX U-Net, {args.steps} steps, seed {args.seed}: "
        + ", ".join(f"{k} mIoU {r['miou']:.3f}" for k, r in results.items()),
    )
    print(f"wrote {stem.with_suffix('.png')} and {stem.with_suffix('.json')}")
    return results


if __name__ == "__main__":
    main()
