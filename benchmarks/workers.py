"""One measurement per fresh subprocess, and how the parent gathers them.

Every (row, shape) runs in a fresh Python subprocess (``python -m benchmarks.bench --worker``).
``jax_enable_x64`` is a process-global flag, so the x64 row needs its own process anyway;
running *every* row that way keeps them comparable (no JAX/torch thread pools, caches or
allocator state left over from another row) and makes the CPU memory measurement possible at
all (see ``MEMORY_METHODS["rss-hwm"]``). ``--in-process`` trades that isolation for speed (the
smoke test uses it); the x64 row still gets a subprocess there.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from benchmarks import REPO_ROOT
from benchmarks.measure import finalise, measure
from benchmarks.rows import X64_ROWS, Spec

# glibc serves allocations of at least this size with mmap and unmaps them on free when the
# threshold is set explicitly (which also turns off its dynamic growth), so resident memory
# follows the live large buffers: see MEMORY_METHODS["rss-hwm"].
MMAP_THRESHOLD_BYTES = 65536
# The line a worker or probe subprocess prints its JSON result on.
RESULT_MARKER = "BENCH_RESULT_JSON "


def subprocess_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment with the repository importable, plus ``extra``."""
    env = {**os.environ, **(extra or {})}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    return env


def run_marked(
    args: Sequence[str], env: dict[str, str], timeout: float
) -> tuple[dict[str, Any] | None, str]:
    """Run ``python -m benchmarks.bench ARGS``; its marked JSON result (or None) and a tail of
    its output for the error message. Raises ``subprocess.TimeoutExpired``."""
    cmd = [sys.executable, "-m", "benchmarks.bench", *args]
    proc = subprocess.run(
        cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER) :]), ""
    tail = (proc.stderr or proc.stdout or "").strip()[-800:]
    return None, f"exited with {proc.returncode}: {tail}"


def print_marked(payload: dict[str, Any]) -> None:
    """The worker side of :func:`run_marked`."""
    print(RESULT_MARKER + json.dumps(payload), flush=True)


def worker_env(spec: Spec, *, memory_run: bool) -> dict[str, str]:
    """The environment of one worker: x64 explicit either way, the CPU pinned for CPU rows."""
    # Explicit either way, so a JAX_ENABLE_X64 in the caller's shell cannot leak into f32 rows.
    extra = {"JAX_ENABLE_X64": "1" if spec.row in X64_ROWS else "0"}
    if spec.device == "cpu":
        extra["JAX_PLATFORMS"] = "cpu"
    if memory_run:
        extra["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD_BYTES)
    return subprocess_env(extra)


def run_worker(spec: Spec, *, timeout: float, memory_run: bool = False) -> dict[str, Any]:
    """Measure one spec in a fresh subprocess; failures come back as an error result."""
    base: dict[str, Any] = {"row": spec.row, "shape": list(spec.shape), "errors": {}}
    try:
        result, failure = run_marked(
            ["--worker", spec.to_json()], worker_env(spec, memory_run=memory_run), timeout
        )
    except subprocess.TimeoutExpired:
        result, failure = None, f"timed out after {timeout:.0f} s"
    if result is not None:
        return result
    base.update(status="error")
    base["errors"]["worker"] = f"{spec.task} worker {failure}"
    return base


def _merge(timed: dict[str, Any], mem: dict[str, Any]) -> dict[str, Any]:
    merged = dict(timed)
    if mem.get("status") == "skipped" or timed.get("status") == "skipped":
        return merged
    merged["memory"] = mem.get("memory", {})
    errors = dict(timed.get("errors", {}))
    errors.update({f"memory:{k}": v for k, v in mem.get("memory_errors", {}).items()})
    if mem.get("status") == "error":
        errors.update({f"memory:{k}": v for k, v in mem.get("errors", {}).items()})
    merged["errors"] = errors
    return merged


def measure_row(
    row: str, shape: Sequence[int], args: argparse.Namespace, modes: Sequence[str] | None = None
) -> dict[str, Any]:
    """One (row, shape) result, measured according to the isolation options.

    ``args``: ``device``, ``repeats``, ``warmup``, ``seed``, ``in_process`` and ``timeout`` of
    the command line. ``modes``: given, time only these modes and skip the memory.
    """
    spec = Spec(
        row=row,
        shape=tuple(int(size) for size in shape),
        device=args.device,
        repeats=args.repeats,
        warmup=args.warmup,
        seed=args.seed,
        modes=tuple(modes or ("fwd", "fwdbwd")),
        task="time" if modes else "both",
    )
    if args.in_process and row not in X64_ROWS:
        result = measure(spec, in_process=True)
    elif spec.device == "cpu" and spec.task == "both":
        # Two processes: the timing one keeps glibc's default (fast) allocator settings, the
        # memory one fixes the mmap threshold so the RSS high-water mark is meaningful.
        timed = run_worker(spec.with_changes(task="time"), timeout=args.timeout)
        mem = run_worker(spec.with_changes(task="mem"), timeout=args.timeout, memory_run=True)
        result = _merge(timed, mem)
    else:
        result = run_worker(spec, timeout=args.timeout)
    return finalise(result, spec)
