"""The RMI term along a path from a bad prediction to the target, from both backends.

Reproduces the "Graphs" plot of the ``rmi-pytorch`` README: the loss *without* its BCE
component (``bce_weight=0``) between a random binary ``256 x 256`` target ``Y`` and the
prediction ``P_alpha = (1 - alpha) * P + alpha * Y`` for ``alpha`` in ``[0, 1]``, with three
starting predictions ``P`` (probabilities, so ``with_logits=False``):

- ``Random``: uniform random probabilities;
- ``All zero``: zeros everywhere (probabilities of exactly 0 and 1 are valid inputs);
- ``1 - target``: the inverse of the target.

Each curve is computed by ``rmi_jax.rmi_loss`` and by ``rmi_torch.rmi_loss``, each with its
default precision (JAX: float32 statistics; PyTorch: float64 statistics, the ``rmi-pytorch``
default), in one batched call per curve (``reduction="none"``, one example per ``alpha``). The
two are overlaid, and the script exits non-zero if they differ by more than ``1e-5`` relative.

Two panels, one per downsampling method: ``"max"`` (the default of both backends and of
``rmi-pytorch`` today) and ``"avg"`` (the default of ``rmi-pytorch``'s first release, which drew
the original plot). Max pooling a random binary target gives mostly ones (a 3 x 3 window is all
zero with probability 1/512), and max pooling the ``Random`` and ``1 - target`` starts gives
nearly constant maps too, so their max-pooled curves stay flat until the target dominates::

    python examples/loss_curves.py --out docs        # about 10 s; writes docs/loss_curves.png
    python examples/loss_curves.py --size 64 --points 5 --out /tmp/smoke

Output: ``<out>/loss_curves.png``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Run as ``python examples/loss_curves.py``, only examples/ is on sys.path: put the repository
# root first so the backends import from this checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import rmi_jax  # noqa: E402
import rmi_torch  # noqa: E402

# The curves must coincide: JAX's float32 route is held to 1e-5 relative of the float64
# reference by the parity tests, and PyTorch here runs in float64.
MAX_RELATIVE_DIFFERENCE = 1e-5
DOWNSAMPLING_METHODS = ("max", "avg")  # one panel each
FIGURE_DPI = 80  # the figure is committed as docs/loss_curves.png: keep it small


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="height and width of the target")
    parser.add_argument("--points", type=int, default=51, help="alphas in [0, 1]")
    parser.add_argument("--seed", type=int, default=0, help="seed of the target and 'Random'")
    parser.add_argument("--out", type=Path, default=Path("outputs"), help="output folder")
    return parser.parse_args(argv)


def starting_predictions(target: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The README's three predictions for ``target`` ``[H, W]``: name -> float32 ``[H, W]``."""
    return {
        "Random": rng.random(target.shape, dtype=np.float32),
        "All zero": np.zeros_like(target),
        "1 - target": 1.0 - target,
    }


def interpolate(pred: np.ndarray, target: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """``(1 - alpha) * pred + alpha * target`` for every alpha: ``[A, 1, H, W]`` (NCHW, C = 1)."""
    a = alphas.astype(np.float32)[:, None, None, None]
    return (1.0 - a) * pred[None, None] + a * target[None, None]


def jax_curve(preds: np.ndarray, target: np.ndarray, method: str) -> np.ndarray:
    """RMI without BCE per example, ``rmi_jax`` defaults (float32 statistics); NCHW in."""
    targets = jnp.broadcast_to(jnp.asarray(target), preds.shape)
    values = rmi_jax.rmi_loss(
        jnp.asarray(preds),
        targets,
        with_logits=False,
        bce_weight=0.0,
        downsampling_method=method,
        channel_axis=1,
        reduction="none",
    )
    return np.asarray(values, dtype=np.float64)


def torch_curve(preds: np.ndarray, target: np.ndarray, method: str) -> np.ndarray:
    """RMI without BCE per example, ``rmi_torch`` defaults (float64 statistics)."""
    p = torch.from_numpy(preds)
    values = rmi_torch.rmi_loss(
        p,
        torch.from_numpy(target).expand_as(p),
        with_logits=False,
        bce_weight=0.0,
        downsampling_method=method,
        reduction="none",
    )
    return values.numpy().astype(np.float64)


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    """``max |a - b| / max |b|``: the curves cross zero, so a pointwise ratio would blow up."""
    return float(np.abs(a - b).max() / np.abs(b).max())


Curves = dict[str, dict[str, dict[str, np.ndarray]]]  # method -> start -> backend -> values


def plot(path: Path, alphas: np.ndarray, curves: Curves) -> None:
    """Save the overlay, a panel per downsampling method: solid lines for JAX, open markers for
    PyTorch, one colour per starting prediction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5.0 * len(curves), 4.4), squeeze=False)
    for ax, (method, by_start) in zip(axes[0], curves.items(), strict=True):
        for k, (name, by_backend) in enumerate(by_start.items()):
            ax.plot(alphas, by_backend["jax"], color=f"C{k}", lw=1.8, label=f"{name} (JAX)")
            ax.plot(
                alphas,
                by_backend["torch"],
                ls="none",
                marker="o",
                ms=4,
                mfc="none",
                color=f"C{k}",
                label=f"{name} (PyTorch)",
            )
        ax.set_xlabel("alpha  (prediction = (1 - alpha) * start + alpha * target)")
        ax.set_ylabel("RMI loss, bce_weight = 0")
        ax.set_title(f'downsampling_method="{method}"', fontsize=10)
        ax.grid(alpha=0.3)
    # One legend under both panels: inside, it would hide a curve in one of them.
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=8)
    fig.suptitle("RMI term along the path from a start to a random binary target", fontsize=10)
    fig.tight_layout(rect=(0.0, 0.12, 1.0, 1.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=FIGURE_DPI)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Compute, compare and plot the curves; return the exit status (1 if they disagree)."""
    args = parse_args(argv)
    rng = np.random.default_rng(args.seed)
    target = rng.integers(0, 2, (args.size, args.size)).astype(np.float32)
    alphas = np.linspace(0.0, 1.0, args.points)
    curves: Curves = {method: {} for method in DOWNSAMPLING_METHODS}
    worst = 0.0
    for name, start in starting_predictions(target, rng).items():
        preds = interpolate(start, target, alphas)
        for method in DOWNSAMPLING_METHODS:
            jax_values = jax_curve(preds, target, method)
            torch_values = torch_curve(preds, target, method)
            curves[method][name] = {"jax": jax_values, "torch": torch_values}
            rel = relative_difference(jax_values, torch_values)
            worst = max(worst, rel)
            print(
                f"{method} {name:<11} loss {torch_values[0]:8.4f} -> {torch_values[-1]:8.4f}   "
                f"JAX vs PyTorch: max abs difference {np.abs(jax_values - torch_values).max():.2e}"
                f", relative {rel:.2e}"
            )
    path = args.out / "loss_curves.png"
    plot(path, alphas, curves)
    print(f"wrote {path}")
    if worst > MAX_RELATIVE_DIFFERENCE:
        print(f"FAIL: JAX and PyTorch differ by {worst:.2e} > {MAX_RELATIVE_DIFFERENCE:.0e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
