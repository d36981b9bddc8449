"""Speed and memory benchmark of the RMI loss backends against the literal baseline.

Run from the repository root::

    python -m benchmarks.bench                          # CPU or GPU, default shapes and rows
    python -m benchmarks.bench --device cpu --sizes 64 --repeats 3 --rows baseline-f64 rmi_jax
    python -m benchmarks.bench --scaling                # adds the rmi_jax linear-scaling section
    python -m benchmarks.bench --compare benchmarks/results-cpu.json --out /tmp/now.json
    python -m benchmarks.bench --device cpu --shapes 2x4x64x96x96 2x4x768x768 \
        --rows baseline-f64 rmi_jax rmi_torch-f32 --out benchmarks/results-cpu-volume.json

For every shape ``N x C x S x S``, or each of ``--shapes`` (volumes ``N x C x D x H x W`` too),
with standard-normal logits, an i.i.d. binary target and a fixed seed, and every row it
measures the median wall time of the forward pass and of forward + backward (gradient w.r.t.
the logits), and the peak extra memory, then prints a table and the issues' targets judged on
this run, and writes everything, with the methods and the machine's metadata
(CPU model and SIMD flags, devices, versions), to a JSON file. The JSON is rewritten after every
row (``"complete": false`` until the end), so a run cut short keeps what it measured.

This module is the command line; the parts are ``benchmarks.rows`` (what each row runs),
``benchmarks.measure`` (timing and memory), ``benchmarks.workers`` (one subprocess per
measurement), ``benchmarks.machine`` (metadata), ``benchmarks.report`` (ratios and tables) and
``benchmarks.targets``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import REPO_ROOT
from benchmarks.machine import collect_meta, probe, resolve_device, run_probe
from benchmarks.measure import MEMORY_METHODS, TIME_METHOD, measure
from benchmarks.report import (
    add_comparisons,
    compare_runs,
    format_comparison,
    format_scaling,
    format_table,
    format_targets,
)
from benchmarks.rows import DEFAULT_WARMUP, ROWS, Spec
from benchmarks.targets import judge_all
from benchmarks.workers import measure_row, print_marked

DEFAULT_SIZES = (64, 128, 256)
GPU_EXTRA_SIZE = 512
DEFAULT_SCALING_SIZES = (32, 64, 128, 256)
SCALING_CLASSES = (1, 5, 21)
SCALING_FIXED_SIZE = 128
SCALING_FIXED_CLASSES = 21
DEFAULT_TIMEOUT_S = 1800.0

COLUMNS = {
    "fwd_ms / fwdbwd_ms": "median milliseconds of the forward / forward+backward",
    "peak_extra_mib": "primary peak extra memory of fwd+bwd, by memory_method",
    "peak_extra_x_input": "peak_extra as a multiple of one float32 logits tensor",
    "rss_extra_mib": "CPU only: resident-set growth (rss-hwm) for every row, "
    "a cross-check of the XLA figure for JAX rows",
    "*_speedup_vs_baseline_f64/f32": "baseline time / row time (higher is faster)",
    "*_ratio_to_floor": "row time / floor time (1 = as fast as one elementwise pass)",
}


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _payload(args: argparse.Namespace, results: list, scaling: list, complete: bool) -> dict:
    return {
        "meta": args.meta,
        "methods": {"time": TIME_METHOD, "memory": MEMORY_METHODS},
        "columns": COLUMNS,
        "complete": complete,
        "results": results,
        "targets": judge_all(results, args.device),
        "scaling": scaling,
    }


def _scaling_shapes(args: argparse.Namespace) -> list[tuple[str, tuple[int, int, int, int]]]:
    sweeps = [("size", (args.batch, SCALING_FIXED_CLASSES, s, s)) for s in args.scaling_sizes]
    sweeps += [
        ("classes", (args.batch, c, SCALING_FIXED_SIZE, SCALING_FIXED_SIZE))
        for c in SCALING_CLASSES
    ]
    return sweeps


def run_benchmark(
    args: argparse.Namespace, checkpoint: Callable[[dict[str, Any]], None] = lambda _: None
) -> dict[str, Any]:
    """Measure every (shape, row), then the scaling sweep if asked; return the JSON payload.

    ``checkpoint`` gets the payload so far after every measurement.
    """
    results: list[dict[str, Any]] = []
    scaling: list[dict[str, Any]] = []
    if not args.no_table:
        shapes = args.shapes or [(args.batch, args.classes, size, size) for size in args.sizes]
        for shape in shapes:
            for row in args.rows:
                _progress(f"[bench] {'x'.join(map(str, shape))} {row} ...")
                results.append(measure_row(row, shape, args))
                add_comparisons(results)
                checkpoint(_payload(args, results, scaling, complete=False))

    if args.scaling:
        for sweep, shape in _scaling_shapes(args):
            _progress(f"[bench] scaling {'x'.join(map(str, shape))} rmi_jax ...")
            res = measure_row("rmi_jax", shape, args, modes=("fwdbwd",))
            res["sweep"] = sweep
            t = res.get("fwdbwd_ms")
            if isinstance(t, (int, float)):
                res["ns_per_element"] = t * 1e6 / float(np.prod(shape))
            scaling.append(res)
            checkpoint(_payload(args, results, scaling, complete=False))

    return _payload(args, results, scaling, complete=True)


def _shape(text: str) -> tuple[int, ...]:
    """``NxCxHxW`` or ``NxCxDxHxW``."""
    shape = tuple(int(size) for size in text.split("x"))
    if len(shape) not in (4, 5):
        raise argparse.ArgumentTypeError(f"expected NxCxHxW or NxCxDxHxW, got {text!r}")
    return shape


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=None,
                        help=f"square sizes S (default {' '.join(map(str, DEFAULT_SIZES))}, "
                        f"plus {GPU_EXTRA_SIZE} on a GPU)")  # fmt: skip
    parser.add_argument(
        "--shapes",
        type=_shape,
        nargs="+",
        default=None,
        metavar="NxCx...",
        help="explicit shapes instead of --sizes, e.g. 2x4x64x96x96 (a volume)",
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS), metavar="ROW",
                        help=f"subset of: {' '.join(ROWS)}")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON output (default benchmarks/results-<device>.json)")  # fmt: skip
    parser.add_argument("--scaling", action="store_true",
                        help="also time rmi_jax fwd+bwd over sizes and class counts")  # fmt: skip
    parser.add_argument("--scaling-sizes", type=int, nargs="+", default=list(DEFAULT_SCALING_SIZES))
    parser.add_argument("--no-table", action="store_true", help="skip the main table")
    parser.add_argument("--in-process", action="store_true",
                        help="measure in this process (fast, less isolated)")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                        help="seconds allowed to one worker subprocess")  # fmt: skip
    parser.add_argument("--compare", type=Path, default=None, metavar="JSON",
                        help="an earlier run's JSON: print fwd+bwd now against then")  # fmt: skip
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    return parser


def _write(path: Path, payload: dict[str, Any]) -> None:
    """Replace ``path`` in one step, so that a reader never sees half a file."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(payload, indent=2) + "\n")
    partial.replace(path)


def _print_summary(args: argparse.Namespace, payload: dict[str, Any]) -> None:
    meta = args.meta
    print(f"device: {meta['device_name']} ({args.device}), cpus {meta['cpu_count']}, "
          f"jax {meta['jax_version']}, torch {meta['torch_version']}, "
          f"repeats {args.repeats}")  # fmt: skip
    print(f"cpu: {meta['cpu_model']} [{' '.join(meta['cpu_flags'])}]")
    load = meta["loadavg_at_start"]
    if load and meta["cpu_count"] and load[0] > 0.5 * meta["cpu_count"]:
        # Other processes on the machine make CPU timings noisy; say so next to the numbers.
        print(f"warning: 1-minute load average was {load[0]:.2f} at the start on "
              f"{meta['cpu_count']} CPUs: timings may be noisy")  # fmt: skip
    if payload["results"]:
        print(format_table(payload["results"]))
        print("times: median ms; peak MiB: extra memory of one fwd+bwd (JAX rows: device peak "
              "on CUDA, else XLA analysis; torch rows: RSS growth on CPU, allocator peak on "
              "CUDA); vs b-*: fwd+bwd speed-up; / floor: fwd+bwd time over the elementwise "
              "floor")  # fmt: skip
    if payload["targets"]:
        print(format_targets(payload["targets"]))
    if args.compare is not None:
        previous = json.loads(args.compare.read_text())["results"]
        print(format_comparison(compare_runs(previous, payload["results"]), str(args.compare)))
    if payload["scaling"]:
        print(format_scaling(payload["scaling"]))


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """Entry point; returns the JSON payload (None in worker/probe mode)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.worker is not None:
        print_marked(measure(Spec.from_json(args.worker)))
        return None
    if args.probe:
        print_marked(probe())
        return None

    probe_info = probe() if args.in_process else run_probe()
    args.device = resolve_device(args.device, probe_info)
    if args.sizes is None:
        args.sizes = list(DEFAULT_SIZES) + ([GPU_EXTRA_SIZE] if args.device == "cuda" else [])
    if args.out is None:
        args.out = REPO_ROOT / "benchmarks" / f"results-{args.device}.json"
    args.argv = argv
    args.meta = collect_meta(args, probe_info)
    args.out.parent.mkdir(parents=True, exist_ok=True)

    payload = run_benchmark(args, checkpoint=lambda partial: _write(args.out, partial))
    _print_summary(args, payload)
    _write(args.out, payload)
    print(f"wrote {args.out}")
    return payload


if __name__ == "__main__":
    main()
