"""Where rmi_jax's fwd+bwd time goes on this machine, and what its statistics can cost at least.

Run from the repository root::

    python -m benchmarks.cost_bound                  # 8x21x256x256, writes cost-bound-<device>.json
    python -m benchmarks.cost_bound --size 128 --rounds 5

Everything is measured in one process, round-robin (one call of each entry per round, so that
the machine's slow spells hit all of them alike); medians:

- ``floor``: ``bench.py``'s floor row, one elementwise pass over its inputs;
- ``rmi_jax``: ``bench.py``'s rmi_jax row, fwd+bwd of the loss;
- ``statistics``: fwd+bwd of the region statistics alone: the loss's RMI term
  (``bce_weight=0``) at stride 1 on maps of the size the loss's pooling leaves, which runs the
  same windows (spacing 1) through the same statistics, plus two elementwise passes over those
  maps (a ninth of the inputs' size);
- ``householder``: the R factor of a Householder QR (LAPACK) of matrices shaped like the region
  vectors with their ridge rows, ``[L + 2d, 2d]`` per map, in the same chunks: the textbook
  one-pass alternative to the two-pass Cholesky QR, with a quarter of its products' flops;
- ``sgemm``: a 2048^3 float32 matrix product, the machine's matrix-product rate.

The statistics and the QR get standard-normal (and binary) data of the right shapes: none of
their steps branches on the values, so their cost depends on the shapes alone.

From these it derives the statistics' product bound, the least time their four ``2d x 2d x L``
matrix products per map (two Gram products and ``R1^-T Z`` in the forward, ``W Z`` in the
backward) take at the sgemm rate, and the statistics' time over it (issue 12 asks for at most
2x); and what is left for the statistics if rmi_jax is to stay within 3x the floor (issue 5),
``3 * floor - (rmi_jax - statistics)``. The output records the CPU model and SIMD flags.
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
from rmi_core.options import CHUNK_BYTES, dense_window_grid, maps_per_chunk, window_step

BATCH, CLASSES = 8, 21
SGEMM_SIZE = 2048
# Issue 12's CPU target: the statistics within this factor of their product bound.
PRODUCT_BOUND_TARGET = 2.0


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


def build(size: int) -> tuple[dict[str, Callable[[], Any]], dict[str, float], float]:
    """The timed closures, the flops of the matrix-product entries, and those of the
    statistics' four products."""
    import jax
    import jax.numpy as jnp

    from rmi_jax import rmi_loss

    # The statistics as the loss runs them with its defaults.
    default = {k: p.default for k, p in inspect.signature(rmi_loss).parameters.items()}
    radius, stride = default["radius"], default["stride"]
    method = default["downsampling_method"]
    if window_step(method, stride) != 1:
        raise ValueError(f"the statistics entry assumes windows at spacing 1; {method!r} differs")
    rows, cols = dense_window_grid(size, size, radius, method, stride)
    map_size = rows + radius - 1  # the pooled map that holds rows x cols windows at spacing 1

    shape = (BATCH, CLASSES, size, size)
    backend = jax.default_backend()
    floor, loss = (
        prepare(Spec(row=row, shape=shape, device="cuda" if backend == "gpu" else "cpu"))
        for row in ("floor", "rmi_jax")
    )

    logits, target = make_inputs((BATCH, CLASSES, map_size, map_size), seed=0)
    p_maps, y_maps = jax.nn.sigmoid(jnp.asarray(logits)), jnp.asarray(target)

    def rmi_term(p: jax.Array) -> jax.Array:
        options = {"with_logits": False, "bce_weight": 0.0, "stride": 1, "channel_axis": 1}
        return rmi_loss(p, y_maps, **options)

    stats = jax.jit(jax.value_and_grad(rmi_term))

    maps, k, windows = BATCH * CLASSES, 2 * radius * radius, rows * cols
    budget = CHUNK_BYTES["cpu" if backend == "cpu" else "accelerator"]
    chunk = maps_per_chunk(maps, windows, radius, 4, budget)
    tall = jnp.asarray(make_inputs((maps, windows + k, k), seed=2)[0])  # [maps, L + 2d, 2d]
    householder = jax.jit(
        lambda a: jax.lax.map(lambda b: jnp.linalg.qr(b, mode="r"), a, batch_size=chunk)
    )
    square = jnp.asarray(make_inputs((SGEMM_SIZE, SGEMM_SIZE), seed=1)[0])
    sgemm = jax.jit(lambda a: a @ a)

    functions = {
        "floor": floor.fwdbwd,
        "rmi_jax": loss.fwdbwd,
        "statistics": lambda: stats(p_maps),
        "householder": lambda: householder(tall),
        "sgemm": lambda: sgemm(square),
    }
    flops = {
        "householder": 2.0 * maps * k * k * (windows + k),  # 2 m n^2, rounded up
        "sgemm": 2.0 * SGEMM_SIZE**3,
    }
    product_flops = 4 * 2.0 * maps * k * k * windows
    return functions, flops, product_flops


def _print(payload: dict[str, Any]) -> None:
    ms, gflops = payload["median_ms"], payload["gflop_per_s"]
    size = payload["shape"][-1]
    print(
        f"8x21x{size}x{size} on {payload['cores']} cores of {payload['machine']} "
        f"[{' '.join(payload['cpu_flags'])}], median of {payload['rounds']} interleaved rounds"
    )
    for name, value in ms.items():
        rate = f"  {gflops[name]:6.1f} GFLOP/s" if name in gflops else ""
        print(f"  {name:<12} {value:8.1f} ms{rate}")
    rest = payload["rmi_jax_minus_statistics_ms"]
    print(f"  rmi_jax - statistics: {rest:.1f} ms = {rest / ms['floor']:.2f} floor")
    bound, ratio = payload["products_at_sgemm_rate_ms"], payload["statistics_to_product_bound"]
    print(f"  product bound (the four products at the sgemm rate): {bound:.1f} ms")
    verdict = "met" if ratio <= PRODUCT_BOUND_TARGET else "NOT MET"
    print(
        f"  statistics / product bound: {ratio:.2f} "
        f"(target at most {PRODUCT_BOUND_TARGET:g}: {verdict})"
    )
    budget = payload["statistics_budget_3x_floor_ms"]
    print(f"  what the statistics may take for rmi_jax within 3x floor: {budget:.1f} ms")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Entry point; returns the JSON payload."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="S of the 8x21xSxS inputs")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    import jax

    load = list(os.getloadavg())
    functions, flops, product_flops = build(args.size)
    ms = _median_ms(functions, args.rounds)
    rest = ms["rmi_jax"] - ms["statistics"]
    gflops = {name: count / ms[name] / 1e6 for name, count in flops.items()}
    product_bound = product_flops / gflops["sgemm"] / 1e6
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
        "gflop_per_s": gflops,
        "rmi_jax_minus_statistics_ms": rest,
        "statistics_budget_3x_floor_ms": 3 * ms["floor"] - rest,
        "products_at_sgemm_rate_ms": product_bound,
        "statistics_to_product_bound": ms["statistics"] / product_bound,
    }
    _print(payload)
    out = args.out or REPO_ROOT / "benchmarks" / f"cost-bound-{jax.default_backend()}.json"
    out.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")
    print(f"wrote {out}")
    return payload


if __name__ == "__main__":
    main()
