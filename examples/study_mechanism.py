"""Why an RMI run loses a class: the diagnostics ``examples/study.py`` records, drawn and tabled.

For one run (dataset, loss, seed) of a study JSON, per checkpoint: each class's held-out IoU,
the per-class gradient norms of the base term (CE or BCE) and of the RMI term w.r.t. the logits,
and each class's held-out map: its correlation with its target, and its mean probability where
the class is against the largest other class's there. Optionally a second run (the baseline of
the same seed) is drawn beside it::

    python examples/study_mechanism.py RUN.json --run shapes ce+rmi 1 \
        --against BASE.json shapes recipe 1 --out docs/study_mechanism.png

Prints a markdown table of the run's last checkpoint and writes the figure.

``--dead-units DATASET LOSS SEED STEPS`` instead retrains the first ``STEPS`` steps of one run
(the study's settings) and tables, every few steps, the share of each convolution block's
channels that are dead (their ReLU output is 0 at every pixel of 32 training images, so they
pass no gradient back) and how much the logits vary over the pixels::

    python examples/study_mechanism.py --dead-units textures ce 5 150
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from examples.common import batch_order  # noqa: E402
from examples.study import DATASETS, FIGURE_DPI, FULL, NUM_TRAIN, jitted_step  # noqa: E402
from examples.train_flax import UNet, init_state  # noqa: E402

#: How many training images the dead-unit count looks at.
DEAD_UNIT_IMAGES = 32


def find_run(path: Path, dataset: str, loss: str, seed: int) -> dict:
    """The Flax record of ``dataset``, ``loss`` and ``seed`` in the study JSON at ``path``."""
    for r in json.loads(path.read_text())["runs"]:
        if (r["framework"], r["dataset"], r["loss"], r["seed"]) == ("flax", dataset, loss, seed):
            return r
    raise ValueError(f"{path} has no flax run {dataset} {loss} seed {seed}")


def series(run: dict, key: str) -> np.ndarray:
    """``[checkpoints, classes]`` of one diagnostic."""
    return np.array([d[key] for d in run["diagnostics"]], dtype=np.float64)


def table(run: dict) -> str:
    """The last checkpoint's diagnostics per class, as markdown."""
    names = DATASETS[run["dataset"]].class_names
    last = run["diagnostics"][-1]
    rows = [
        "| class | IoU | corr(p, target) | mean p where the class is | largest other p there "
        "| ‖∂ base/∂z‖ | ‖∂ RMI/∂z‖ |",
        "|---|---|---|---|---|---|---|",
    ]
    for c, name in enumerate(names):
        rows.append(
            f"| {name} | {run['metrics']['iou'][c]:.3f} | {last['corr'][c]:.3f} | "
            f"{last['p_own'][c]:.3f} | {last['p_rival'][c]:.3f} | "
            f"{last['grad_base'][c]:.2e} | {last['grad_rmi'][c]:.2e} |"
        )
    return "\n".join(rows)


def rmi_gradient_share(run: dict) -> list[float]:
    """Per checkpoint, ``‖g_rmi‖ / (‖g_base‖ + ‖g_rmi‖)`` over all classes (w.r.t. the logits)."""
    base = np.linalg.norm(series(run, "grad_base"), axis=1)
    rmi = np.linalg.norm(series(run, "grad_rmi"), axis=1)
    return [round(float(v), 3) for v in rmi / (base + rmi)]


def dead_channel_shares(model: UNet, images: jax.Array) -> dict[str, float]:
    """Per convolution block, the share of its output channels that are 0 at every pixel of
    ``images``: dead ReLUs, which pass no gradient back (no normalisation layer revives them)."""
    return {
        name: float(jnp.mean(jnp.max(h, axis=(0, 1, 2)) <= 0))
        for name, h in model.features(images).items()
    }


def dead_units_table(dataset: str, loss: str, seed: int, steps: int, rows: int = 12) -> str:
    """The first ``steps`` steps of one study run, as markdown: at ``rows`` evenly spaced
    steps, the training loss, each block's dead-channel share and the logits' spread."""
    data = DATASETS[dataset].load(seed)
    graphdef, state = init_state(seed, FULL.steps, len(DATASETS[dataset].class_names))
    step = jitted_step(graphdef, loss, FULL.steps)
    order = batch_order(NUM_TRAIN, FULL.steps, FULL.batch_size, seed)
    x_all, y_all = jnp.asarray(data.train_x), jnp.asarray(data.train_t)
    probe = x_all[:DEAD_UNIT_IMAGES]
    shown = set(np.linspace(0, steps, rows, dtype=int).tolist())
    lines = [
        "| step | training loss | dead channels: "
        + ", ".join(UNet.BLOCKS)
        + " | std of the logits over the pixels |",
        "|---|---|---|---|",
    ]
    loss_value = None  # the loss of the update that led to the state tabled
    for i in range(steps + 1):
        if i in shown:
            model, _ = nnx.merge(graphdef, state)
            shares = ", ".join(f"{v:.2f}" for v in dead_channel_shares(model, probe).values())
            spread = float(jnp.mean(jnp.std(model(probe), axis=(1, 2))))
            loss_text = "" if loss_value is None else f"{float(loss_value):.3f}"
            lines.append(f"| {i} | {loss_text} | {shares} | {spread:.3f} |")
        if i < steps:
            state, loss_value = step(state, x_all[order[i]], y_all[order[i]])
    return "\n".join(lines)


def plot(path: Path, runs: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(runs), 4, figsize=(17, 3.4 * len(runs)), squeeze=False)
    for row, run in zip(axes, runs, strict=True):
        names = DATASETS[run["dataset"]].class_names
        steps = [d["step"] for d in run["diagnostics"]]
        iou = np.array(
            [[np.nan if v is None else v for v in c] for c in run["checkpoint_iou"]], dtype=float
        )
        title = f"{run['dataset']} {run['loss']} seed {run['seed']}"
        for c, name in enumerate(names):
            colour = f"C{c}"
            row[0].plot(steps, iou[:, c], "o-", color=colour, label=name)
            row[1].semilogy(steps, series(run, "grad_base")[:, c], "o-", color=colour)
            row[1].semilogy(steps, series(run, "grad_rmi")[:, c], "s--", color=colour)
            row[2].plot(steps, series(run, "corr")[:, c], "o-", color=colour)
            row[3].plot(steps, series(run, "p_own")[:, c], "o-", color=colour)
            row[3].plot(steps, series(run, "p_rival")[:, c], "x:", color=colour)
        row[0].set_title(f"{title}: held-out IoU per class", fontsize=9)
        row[0].legend(fontsize=7)
        row[1].set_title("‖∂term/∂logits‖ per class: base (o-), RMI (s--)", fontsize=9)
        row[2].set_title("held-out corr(p_c, target_c)", fontsize=9)
        row[3].set_title("mean p_c where c is (o-), largest other p there (x:)", fontsize=9)
        for ax in row:
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=FIGURE_DPI)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", type=Path, nargs="?")
    parser.add_argument("--run", nargs=3, metavar=("DATASET", "LOSS", "SEED"))
    parser.add_argument(
        "--shares",
        action="store_true",
        help="only print every Flax run's RMI share of the gradient norm per checkpoint",
    )
    parser.add_argument("--against", nargs=4, metavar=("JSON", "DATASET", "LOSS", "SEED"))
    parser.add_argument(
        "--dead-units",
        nargs=4,
        metavar=("DATASET", "LOSS", "SEED", "STEPS"),
        help="only retrain the first STEPS steps of one run and table its dead ReLU channels",
    )
    parser.add_argument("--out", type=Path, default=Path("outputs/study/study_mechanism.png"))
    args = parser.parse_args(argv)
    if args.dead_units:
        dataset, loss, seed, steps = args.dead_units
        print(dead_units_table(dataset, loss, int(seed), int(steps)))
        return
    if args.json is None:
        parser.error("a study JSON is required without --dead-units")
    if args.shares:
        print("| dataset | loss | seed | RMI share of the gradient norm at the checkpoints |")
        print("|---|---|---|---|")
        for r in json.loads(args.json.read_text())["runs"]:
            if "diagnostics" in r and r["loss"] != "ce":
                shares = ", ".join(f"{v:.2f}" for v in rmi_gradient_share(r))
                print(f"| {r['dataset']} | {r['loss']} | {r['seed']} | {shares} |")
        return
    if args.run is None:
        parser.error("--run is required without --shares")
    runs = [find_run(args.json, args.run[0], args.run[1], int(args.run[2]))]
    if args.against:
        j, d, loss, s = args.against
        runs.append(find_run(Path(j), d, loss, int(s)))
    for run in runs:
        print(
            f"\n{run['dataset']} {run['loss']} seed {run['seed']}, "
            f"step {run['diagnostics'][-1]['step']}"
        )
        print(table(run))
        print("RMI share of the gradient norm per checkpoint:", rmi_gradient_share(run))
        print("held-out IoU per checkpoint:", run["checkpoint_iou"])
    plot(args.out, runs)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
