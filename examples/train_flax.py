"""Train a small U-Net in Flax NNX on synthetic shapes, with BCE alone and with BCE + RMI.

Two runs share the seed, the data, the initial weights and the batch order; they differ only
in the loss: ``rmi_loss(..., bce_weight=1.0)`` (pure BCE, the RMI term has weight 0) versus
``bce_weight=0.5`` (the reference default: half BCE, half RMI). At the end the script prints
per-class IoU, mean IoU and boundary F1 on a held-out synthetic test set for both runs, and
writes a figure and the metrics as JSON::

    python examples/train_flax.py                    # defaults: about 3 min on 2 CPU cores
    python examples/train_flax.py --steps 3 --out /tmp/smoke

Outputs: ``<out>/train_flax.png`` and ``<out>/train_flax.json``.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path

# Make ``examples`` importable when the script is run as ``python examples/train_flax.py``
# from a checkout: only the script's folder is on sys.path then, not the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from examples.common import (  # noqa: E402
    NUM_CLASSES,
    WIDTH,
    Data,
    run_experiment,
    schedule_settings,
    train_loop,
)
from rmi_jax import rmi_loss  # noqa: E402


class ConvBlock(nnx.Module):
    """Two 3x3 convolutions with ReLU (no normalisation: keeps the two frameworks identical)."""

    def __init__(self, c_in: int, c_out: int, *, rngs: nnx.Rngs) -> None:
        self.conv1 = nnx.Conv(c_in, c_out, kernel_size=(3, 3), padding="SAME", rngs=rngs)
        self.conv2 = nnx.Conv(c_out, c_out, kernel_size=(3, 3), padding="SAME", rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return nnx.relu(self.conv2(nnx.relu(self.conv1(x))))


class UNet(nnx.Module):
    """Two levels down, two up, skip connections by concatenation; NHWC in, logits out."""

    #: The convolution blocks, input to output (the keys of :meth:`features`).
    BLOCKS = ("enc1", "enc2", "mid", "dec2", "dec1")

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

    def features(self, x: jax.Array) -> dict[str, jax.Array]:
        """Each convolution block's output (after its ReLU), by the block's name."""

        def pool(h: jax.Array) -> jax.Array:
            return nnx.max_pool(h, window_shape=(2, 2), strides=(2, 2))

        out = {"enc1": self.enc1(x)}
        out["enc2"] = self.enc2(pool(out["enc1"]))
        out["mid"] = self.mid(pool(out["enc2"]))
        out["dec2"] = self.dec2(jnp.concatenate([self.up2(out["mid"]), out["enc2"]], axis=-1))
        out["dec1"] = self.dec1(jnp.concatenate([self.up1(out["dec2"]), out["enc1"]], axis=-1))
        return out

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head(self.features(x)["dec1"])


def loss_fn(model: UNet, x: jax.Array, y: jax.Array, bce_weight: float) -> jax.Array:
    """The demo's loss: ``rmi_loss`` on the model's NHWC logits (``bce_weight=1``: BCE only)."""
    return rmi_loss(model(x), y, with_logits=True, bce_weight=bce_weight)


def init_state(
    seed: int, steps: int, num_classes: int = NUM_CLASSES
) -> tuple[nnx.GraphDef, nnx.State]:
    """A fresh U-Net and its adam optimizer (warmup-cosine schedule), split for ``jax.jit``.

    The same ``seed`` gives the same initial weights, so every run starts from one point.
    """
    model = UNet(num_classes, WIDTH, rngs=nnx.Rngs(seed))
    schedule = optax.warmup_cosine_decay_schedule(**schedule_settings(steps))
    optimizer = nnx.Optimizer(model, optax.adam(schedule), wrt=nnx.Param)
    return nnx.split((model, optimizer))


def make_train_step(
    graphdef: nnx.GraphDef,
    bce_weight: float | None = None,
    *,
    objective: Callable[..., jax.Array] | None = None,
    total_steps: int | None = None,
) -> Callable[[nnx.State, jax.Array, jax.Array], tuple[nnx.State, jax.Array]]:
    """A pure ``step(state, x, y) -> (state, loss)`` to ``jax.jit`` (with or without shardings).

    Splitting once and jitting a pure function of the state is cheaper per step than
    ``nnx.jit``, whose graph traversal on every call is noticeable for a model this small.

    Args:
        graphdef: the model and optimizer's graph, from :func:`init_state`.
        bce_weight: train with the demo's loss, :func:`loss_fn` with this ``bce_weight``.
        objective: or train with ``objective(logits, targets)``, any other scalar loss (e.g.
            the study's cross-entropy losses). Give exactly one of the two.
        total_steps: with ``objective``, call it as ``objective(logits, targets, progress)``
            where ``progress = step / total_steps`` is the optimizer's step count as a traced
            scalar, so a loss weight can follow a schedule inside the jitted step.
    """
    if (bce_weight is None) == (objective is None):
        raise ValueError(
            "make_train_step takes exactly one of bce_weight and objective, got "
            f"bce_weight={bce_weight!r} and objective={objective!r}"
        )

    def loss_of(model: UNet, x: jax.Array, y: jax.Array, progress: jax.Array) -> jax.Array:
        if objective is None:
            return loss_fn(model, x, y, bce_weight)
        if total_steps is None:
            return objective(model(x), y)
        return objective(model(x), y, progress)

    def step(state: nnx.State, x: jax.Array, y: jax.Array) -> tuple[nnx.State, jax.Array]:
        model, optimizer = nnx.merge(graphdef, state)
        progress = optimizer.step[...].astype(jnp.float32) / (total_steps or 1)
        loss, grads = nnx.value_and_grad(loss_of)(model, x, y, progress)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), loss

    return step


@functools.partial(jax.jit, static_argnums=0)
def _predicted_labels(graphdef: nnx.GraphDef, state: nnx.State, x: jax.Array) -> jax.Array:
    # The graph is a static argument, so models of one architecture share one compilation
    # (the study predicts at several checkpoints of many runs).
    return jnp.argmax(nnx.merge(graphdef, state)(x), axis=-1)


def predict(model: UNet, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Argmax label maps ``[N, H, W]`` for ``images`` ``[N, H, W, 3]``."""
    graphdef, state = nnx.split(model)
    out = [
        _predicted_labels(graphdef, state, jnp.asarray(images[i : i + batch_size]))
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate([np.asarray(o) for o in out])


def train(
    name: str, bce_weight: float, data: Data, order: np.ndarray, seed: int
) -> tuple[np.ndarray, list[float]]:
    """Train one run from scratch; return its test-set label maps and its loss per step."""
    graphdef, state = init_state(seed, steps=order.shape[0])
    step = jax.jit(make_train_step(graphdef, bce_weight))
    x_all, y_all = jnp.asarray(data.train_x), jnp.asarray(data.train_t)

    def one_step(i: int) -> float:
        nonlocal state
        state, loss = step(state, x_all[order[i]], y_all[order[i]])
        return float(loss)

    losses = train_loop(f"flax {name:<8}", range(order.shape[0]), one_step)
    model, _ = nnx.merge(graphdef, state)
    return predict(model, data.test_x), losses


def main(argv: list[str] | None = None) -> dict[str, dict[str, object]]:
    """Both runs, the metrics table, ``<out>/train_flax.png`` and ``<out>/train_flax.json``."""
    return run_experiment(
        "flax", "Flax NNX U-Net", train, argv, description=__doc__.split("\n\n")[0]
    )


if __name__ == "__main__":
    main()
