"""Where rmi_jax's fwd+bwd time goes on this machine, and what its statistics can cost at least.

Run from the repository root::

    python -m benchmarks.cost_bound                  # 8x21x256x256, writes cost-bound-<device>.json
    python -m benchmarks.cost_bound --size 128 --rounds 5

Everything is measured in one process, round-robin (one call of each entry per round, so that
the machine's slow spells hit all of them alike), on ``bench.py``'s inputs; medians:

- ``floor``: ``bench.py``'s floor row, one elementwise pass over the inputs;
- ``rmi_jax``: ``bench.py``'s rmi_jax row, fwd+bwd of the loss;
- ``statistics``: fwd+bwd of the region statistics alone (``region_log_det``), on the pooled
  maps of the same inputs;
- ``householder``: the R factor of a Householder QR of the same region vectors, in the same
  chunks (LAPACK): the textbook one-pass alternative to the two-pass Cholesky QR, with a
  quarter of its products' flops;
- ``sgemm``: a 2048^3 float32 matrix product, the machine's matrix-product rate.

From these it derives what is left for the statistics if rmi_jax is to stay within 3x the
floor (issue 5's target), ``3 * floor - (rmi_jax - statistics)``, and the least time the
statistics' four ``2d x 2d x L`` matrix products (two Gram products and ``R1^-T Z`` in the
forward, ``W Z`` in the backward) can take at the sgemm rate.
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

from benchmarks.bench import REPO_ROOT, Spec, _cpu_model, make_inputs, prepare

BATCH, CLASSES = 8, 21
SGEMM_SIZE = 2048


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
    from rmi_core.options import CHOLESKY_LOG_OFFSET, CHUNK_BYTES, maps_per_chunk, window_step
    from rmi_jax._statistics import _joint_vectors, region_log_det
    from rmi_jax._windows import downsample

    # The statistics exactly as the loss runs them with its defaults.
    default = {k: p.default for k, p in inspect.signature(rmi_loss).parameters.items()}
    radius, stride, epsilon = default["radius"], default["stride"], default["epsilon"]
    method = default["downsampling_method"]
    step = window_step(method, stride)
    offset = CHOLESKY_LOG_OFFSET if default["use_log_trace"] else 0.0

    shape = (BATCH, CLASSES, size, size)
    device = "cuda" if jax.default_backend() == "gpu" else "cpu"
    floor, loss = (
        prepare(Spec(row=row, shape=shape, device=device)) for row in ("floor", "rmi_jax")
    )
    logits, target = make_inputs(shape, seed=0)  # the same inputs as those rows, NCHW
    p_maps = jax.nn.sigmoid(downsample(jnp.asarray(logits), method, stride))
    y_maps = downsample(jnp.asarray(target), method, stride)

    def statistics_sum(p: jax.Array) -> jax.Array:
        return region_log_det(p, y_maps, None, radius, step, epsilon, offset).sum()

    stats = jax.jit(jax.value_and_grad(statistics_sum))

    # The region vectors of every map, for the Householder QR: [maps, 2d, L].
    maps = BATCH * CLASSES
    z = _joint_vectors(
        p_maps.reshape(maps, *p_maps.shape[2:]),
        y_maps.reshape(maps, *y_maps.shape[2:]),
        None,
        radius,
        step,
    )
    k, windows = z.shape[-2:]
    chunk = maps_per_chunk(maps, windows, radius, z.dtype.itemsize, CHUNK_BYTES["cpu"])
    ridge = jnp.broadcast_to(jnp.sqrt(epsilon) * jnp.eye(k, dtype=z.dtype), (maps, k, k))
    tall = jnp.concatenate([jnp.swapaxes(z, -1, -2), ridge], axis=-2)  # [maps, L + 2d, 2d]
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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="S of the 8x21xSxS inputs")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    import jax

    functions, flops, product_flops = build(args.size)
    ms = _median_ms(functions, args.rounds)
    rest = ms["rmi_jax"] - ms["statistics"]
    gflops = {name: count / ms[name] / 1e6 for name, count in flops.items()}
    payload = {
        "shape": [BATCH, CLASSES, args.size, args.size],
        "device": str(jax.devices()[0]),
        "machine": _cpu_model(),
        "cores": len(os.sched_getaffinity(0)),  # fewer under taskset
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "rounds": args.rounds,
        "median_ms": ms,
        "gflop_per_s": gflops,
        "rmi_jax_minus_statistics_ms": rest,
        "statistics_budget_3x_floor_ms": 3 * ms["floor"] - rest,
        "products_at_sgemm_rate_ms": product_flops / gflops["sgemm"] / 1e6,
    }
    print(
        f"8x21x{args.size}x{args.size} on {payload['cores']} cores, "
        f"median of {args.rounds} interleaved rounds"
    )
    for name, value in ms.items():
        rate = f"  {gflops[name]:6.1f} GFLOP/s" if name in gflops else ""
        print(f"  {name:<12} {value:8.1f} ms{rate}")
    print(f"  rmi_jax - statistics: {rest:.1f} ms = {rest / ms['floor']:.2f} floor")
    budget = payload["statistics_budget_3x_floor_ms"]
    print(f"  what the statistics may take for rmi_jax within 3x floor: {budget:.1f} ms")
    print(f"  the four products at the sgemm rate: {payload['products_at_sgemm_rate_ms']:.1f} ms")
    device = jax.default_backend()
    out = args.out or REPO_ROOT / "benchmarks" / f"cost-bound-{device}.json"
    out.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")
    print(f"wrote {out}")
    return payload


if __name__ == "__main__":
    main()
