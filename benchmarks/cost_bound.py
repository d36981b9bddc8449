"""Where rmi_jax's fwd+bwd time goes on this machine, against the memory floor of each stage.

Run from the repository root::

    python -m benchmarks.cost_bound                  # 8x21x256x256, writes cost-bound-<device>.json
    python -m benchmarks.cost_bound --size 128 --rounds 5

Everything is measured in one process, round-robin (one call of each entry per round, so that
the machine's slow spells hit all of them alike); medians:

- ``floor``: ``bench.py``'s floor row, one elementwise pass over the loss's inputs (read the
  prediction and the target, write the gradient): no loss can cost less;
- ``rmi_jax``: ``bench.py``'s rmi_jax row, fwd+bwd of the loss;
- ``statistics``: fwd+bwd of the region statistics alone: the loss's RMI term
  (``bce_weight=0``) at stride 1 on maps of the size the loss's pooling leaves, which runs the
  same windows (spacing 1) through the same statistics, plus two elementwise passes over those
  maps (a ninth of the inputs' size);
- ``statistics_floor``: the floor row on those pooled maps: the statistics' memory floor.

The statistics get standard-normal (and binary) data of the right shapes: none of their steps
branches on the values, so their cost depends on the shapes alone. From these it derives each
stage's distance from its floor: the statistics over ``statistics_floor`` (issue 21 asks for at
most 2x), and the rest of the loss (BCE, pooling, layout: ``rmi_jax - statistics``) over
``floor``. The output records the CPU model and SIMD flags.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import REPO_ROOT
from benchmarks.machine import cpu_flags, cpu_model
from benchmarks.rows import Spec, make_inputs, prepare
from rmi_core.geometry import dense_window_grid, window_step

BATCH, CLASSES = 8, 21
# Issue 21's target: the statistics within this factor of their memory floor.
FLOOR_TARGET = 2.0


def _median_ms(functions: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    import jax

    for function in functions.values():  # compile, then settle
        jax.block_until_ready(function())
        jax.block_until_ready(function())
    samples: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(rounds):
        for name, function in functions.items():
            start = time.perf_counter()
            jax.block_until_ready(function())
            samples[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(times) for name, times in samples.items()}


def build(size: int) -> dict[str, Callable[[], Any]]:
    """The timed closures."""
    import jax
    import jax.numpy as jnp

    from rmi_jax import rmi_loss

    # The statistics as the loss runs them with its defaults.
    default = {k: p.default for k, p in inspect.signature(rmi_loss).parameters.items()}
    radius, stride = default["radius"], default["stride"]
    method = default["downsampling_method"]
    if max(window_step(method, (stride, stride))) != 1:
        raise ValueError(f"the statistics entry assumes windows at spacing 1; {method!r} differs")
    rows, _ = dense_window_grid((size, size), (radius, radius), method, (stride, stride))
    map_size = rows + radius - 1  # the pooled map that holds rows x cols windows at spacing 1

    device = "cuda" if jax.default_backend() == "gpu" else "cpu"
    pooled = (BATCH, CLASSES, map_size, map_size)
    floor, loss, statistics_floor = (
        prepare(Spec(row=row, shape=shape, device=device))
        for row, shape in (
            ("floor", (BATCH, CLASSES, size, size)),
            ("rmi_jax", (BATCH, CLASSES, size, size)),
            ("floor", pooled),
        )
    )

    logits, target = make_inputs(pooled, seed=0)
    p_maps, y_maps = jax.nn.sigmoid(jnp.asarray(logits)), jnp.asarray(target)

    def rmi_term(p: jax.Array) -> jax.Array:
        options = {"with_logits": False, "bce_weight": 0.0, "stride": 1, "channel_axis": 1}
        return rmi_loss(p, y_maps, **options)

    stats = jax.jit(jax.value_and_grad(rmi_term))
    return {
        "floor": floor.fwdbwd,
        "rmi_jax": loss.fwdbwd,
        "statistics": lambda: stats(p_maps),
        "statistics_floor": statistics_floor.fwdbwd,
    }


def _print(payload: dict[str, Any]) -> None:
    ms = payload["median_ms"]
    size = payload["shape"][-1]
    print(
        f"8x21x{size}x{size} on {payload['cores']} cores of {payload['machine']} "
        f"[{' '.join(payload['cpu_flags'])}], median of {payload['rounds']} interleaved rounds"
    )
    for name, value in ms.items():
        print(f"  {name:<16} {value:8.1f} ms")
    rest = payload["rmi_jax_minus_statistics_ms"]
    print(f"  rmi_jax / floor: {payload['rmi_jax_to_floor']:.2f}")
    print(
        f"  rest of the loss (rmi_jax - statistics): {rest:.1f} ms = {rest / ms['floor']:.2f} floor"
    )
    ratio = payload["statistics_to_floor"]
    verdict = "met" if ratio <= FLOOR_TARGET else "NOT MET"
    print(f"  statistics / their floor: {ratio:.2f} (target at most {FLOOR_TARGET:g}: {verdict})")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Entry point; returns the JSON payload."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="S of the 8x21xSxS inputs")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    import jax

    load = list(os.getloadavg())
    ms = _median_ms(build(args.size), args.rounds)
    rest = ms["rmi_jax"] - ms["statistics"]
    payload = {
        "shape": [BATCH, CLASSES, args.size, args.size],
        "device": str(jax.devices()[0]),
        "machine": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": len(os.sched_getaffinity(0)),  # fewer under taskset
        "loadavg_at_start": load,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "rounds": args.rounds,
        "median_ms": ms,
        "rmi_jax_to_floor": ms["rmi_jax"] / ms["floor"],
        "rmi_jax_minus_statistics_ms": rest,
        "rest_to_floor": rest / ms["floor"],
        "statistics_to_floor": ms["statistics"] / ms["statistics_floor"],
    }
    _print(payload)
    out = args.out or REPO_ROOT / "benchmarks" / f"cost-bound-{jax.default_backend()}.json"
    out.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")
    print(f"wrote {out}")
    return payload


if __name__ == "__main__":
    main()
