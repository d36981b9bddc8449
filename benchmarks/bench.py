"""Speed and memory benchmark of the RMI loss backends against the literal baseline.

Run from the repository root::

    python -m benchmarks.bench                          # CPU or GPU, default shapes and rows
    python -m benchmarks.bench --device cpu --sizes 64 --repeats 3 --rows baseline-f64 rmi_jax
    python -m benchmarks.bench --scaling                # adds the rmi_jax linear-scaling section

For every shape ``N x C x S x S`` (standard-normal logits, i.i.d. binary target, fixed seed)
and every row it measures the median wall time of the forward pass and of forward + backward
(gradient w.r.t. the logits), and the peak extra memory, then prints a table and writes
everything, with the methods and the machine's metadata, to a JSON file.

Isolation: every (row, shape) measurement runs in a fresh Python subprocess of this module
(``--worker``). ``jax_enable_x64`` is a process-global flag, so the x64 row needs its own
process anyway; running *every* row that way keeps them comparable (no JAX/torch thread pools,
caches or allocator state left over from another row) and makes the CPU memory measurement
possible at all (see ``MEMORY_METHODS``). ``--in-process`` trades that isolation for speed
(the smoke test uses it); the x64 row still gets a subprocess there.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
import gc
import importlib.metadata
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent

ROWS: tuple[str, ...] = (
    "baseline-f64",
    "baseline-f32",
    "rmi_jax",
    "rmi_jax-x64",
    "rmi_torch-f32",
    "rmi_torch-f64",
    "floor",
)
JAX_ROWS = frozenset({"rmi_jax", "rmi_jax-x64", "floor"})
# Rows that need jax_enable_x64, a global flag: always measured in a subprocess that sets it.
X64_ROWS = frozenset({"rmi_jax-x64"})
# Rows the others are compared with, in the table's ratio columns.
REF_F64, REF_F32, REF_FLOOR = "baseline-f64", "baseline-f32", "floor"

DEFAULT_SIZES = (64, 128, 256)
GPU_EXTRA_SIZE = 512
DEFAULT_SCALING_SIZES = (32, 64, 128, 256)
SCALING_CLASSES = (1, 5, 21)
SCALING_FIXED_SIZE = 128
SCALING_FIXED_CLASSES = 21

DEFAULT_WARMUP = 2  # the first call compiles (JAX) or initialises kernels (torch); one more settles
DEFAULT_TIMEOUT_S = 1800.0
# glibc serves allocations of at least this size with mmap and unmaps them on free when the
# threshold is set explicitly (which also turns off its dynamic growth), so resident memory
# follows the live large buffers: see MEMORY_METHODS["rss-hwm"].
_MMAP_THRESHOLD_BYTES = 65536
_RESULT_MARKER = "BENCH_RESULT_JSON "
_MIB = float(1 << 20)

TIME_METHOD = (
    "median wall time (time.perf_counter) of --repeats calls after --warmup untimed calls (the "
    "first compiles the JAX function); every call is synchronised (jax.block_until_ready, "
    "torch.cuda.synchronize) and Python's gc is off while timing. fwd = the loss value only "
    "(torch under no_grad, jax.jit(loss)); fwd+bwd = the loss and its gradient w.r.t. the "
    "logits (torch .backward(), jax.jit(jax.value_and_grad(loss))). JAX inputs are NHWC and "
    "torch inputs NCHW, both prepared on the device outside the timed region."
)
MEMORY_METHODS: dict[str, str] = {
    "xla-memory-analysis": (
        "JAX rows: temp_size + output_size - alias_size bytes of the compiled fwd+bwd "
        "executable's memory_analysis(). XLA allocates all temporaries of one execution as a "
        "single buffer of temp_size bytes, so this is the memory one call adds beyond its "
        "arguments (the inputs), the gradient output included."
    ),
    "rss-hwm": (
        "CPU: growth of the process's resident-set high-water mark (VmHWM, reset through "
        "/proc/self/clear_refs) over the resident set measured just before one fwd+bwd call, "
        "in a fresh subprocess started with MALLOC_MMAP_THRESHOLD_=65536 (so freed large "
        "buffers go back to the OS and cannot hide later ones), after one warm-up call. "
        "Counts every page the call touches, the gradient output included; page granularity."
    ),
    "rss-hwm-in-process": (
        "as rss-hwm, but in the benchmarking process itself after the timing (--in-process): "
        "glibc may reuse pages freed earlier, so this can under-count; for smoke tests only."
    ),
    "torch-cuda-max-allocated": (
        "CUDA torch rows: torch.cuda.max_memory_allocated() after reset_peak_memory_stats(), "
        "minus memory_allocated() before one fwd+bwd call (the gradient output included)."
    ),
}


class SkipRow(Exception):
    """A row cannot run here (backend missing, no such device): reported, not an error."""


@dataclass
class Spec:
    """One measurement request, serialisable for the worker subprocess."""

    row: str
    shape: tuple[int, int, int, int]
    device: str  # "cpu" or "cuda"
    repeats: int = 7
    warmup: int = DEFAULT_WARMUP
    seed: int = 0
    modes: tuple[str, ...] = ("fwd", "fwdbwd")
    task: str = "both"  # "time", "mem" or "both"

    def to_json(self) -> str:
        """The spec as a JSON string for ``--worker``."""
        return json.dumps({**self.__dict__, "shape": list(self.shape), "modes": list(self.modes)})

    @classmethod
    def from_json(cls, text: str) -> Spec:
        """Inverse of :meth:`to_json`."""
        raw = json.loads(text)
        raw["shape"] = tuple(raw["shape"])
        raw["modes"] = tuple(raw["modes"])
        return cls(**raw)


@dataclass
class Prepared:
    """A row ready to run: closures over device-resident inputs."""

    fwd: Callable[[], Any]
    fwdbwd: Callable[[], Any]
    sync: Callable[[Any], None]
    clear: Callable[[], None] = lambda: None  # drops leftovers (torch's .grad) before a memory run
    xla_memory: Callable[[], dict[str, Any]] | None = None
    cuda_torch: bool = False
    info: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- inputs


def make_inputs(shape: Sequence[int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Standard-normal float32 logits and an i.i.d. binary float32 target, NCHW.

    The i.i.d. binary target is the one of the ``rmi-pytorch`` README's own timing example.
    """
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal(tuple(shape), dtype=np.float32)
    target = rng.integers(0, 2, size=tuple(shape)).astype(np.float32)
    return logits, target


def input_bytes(shape: Sequence[int]) -> int:
    """Size of one float32 input tensor (the logits), the unit of the ``x input`` column."""
    return int(np.prod(shape)) * 4


# --------------------------------------------------------------------------- row builders


def _prepare_torch(spec: Spec, logits: np.ndarray, target: np.ndarray) -> Prepared:
    import torch

    if spec.device == "cuda" and not torch.cuda.is_available():
        raise SkipRow("torch has no CUDA device")
    dev = torch.device(spec.device)
    if spec.row.startswith("baseline"):
        from benchmarks.baseline_torch import baseline_rmi_loss

        loss = functools.partial(baseline_rmi_loss, double=spec.row == "baseline-f64")
    else:
        try:
            import rmi_torch

            rmi_loss = rmi_torch.rmi_loss
        except (ImportError, AttributeError) as exc:
            raise SkipRow(f"rmi_torch.rmi_loss not importable: {exc}") from exc
        loss = functools.partial(
            rmi_loss, with_logits=True, use_double_precision=spec.row == "rmi_torch-f64"
        )

    x = torch.from_numpy(logits).to(dev)
    y = torch.from_numpy(target).to(dev)
    x_grad = x.detach().clone().requires_grad_(True)
    cuda = dev.type == "cuda"

    def fwd() -> Any:
        with torch.no_grad():
            return loss(x, y)

    def fwdbwd() -> Any:
        x_grad.grad = None  # otherwise backward accumulates into the previous gradient
        out = loss(x_grad, y)
        out.backward()
        return x_grad.grad

    def clear() -> None:
        x_grad.grad = None

    def sync(_: Any) -> None:
        if cuda:
            torch.cuda.synchronize()

    info = {"torch_num_threads": torch.get_num_threads()}
    if cuda:
        info["device_name"] = torch.cuda.get_device_name(dev)
    return Prepared(fwd, fwdbwd, sync, clear, None, cuda, info)


def _prepare_jax(spec: Spec, logits: np.ndarray, target: np.ndarray) -> Prepared:
    import jax
    import jax.numpy as jnp

    backend = jax.default_backend()
    if (spec.device == "cuda") != (backend == "gpu"):
        raise SkipRow(f"device {spec.device!r} asked but JAX's default backend is {backend!r}")
    double = spec.row in X64_ROWS
    if double and not jax.config.jax_enable_x64:
        raise SkipRow("needs jax_enable_x64 (run without --in-process, or set JAX_ENABLE_X64=1)")

    if spec.row == "floor":
        # One fused elementwise pass: read logits and target, write a gradient-sized output.
        # It is the memory-traffic floor of any fwd+bwd, so it times fwd and fwd+bwd alike.
        def floor(xs: jax.Array, ys: jax.Array) -> jax.Array:
            return jax.nn.sigmoid(xs) - ys

        fwd_fn = fwdbwd_fn = jax.jit(floor)
    else:
        try:
            import rmi_jax

            rmi_loss = rmi_jax.rmi_loss
        except (ImportError, AttributeError) as exc:
            raise SkipRow(f"rmi_jax.rmi_loss not importable: {exc}") from exc

        def loss(xs: jax.Array, ys: jax.Array) -> jax.Array:
            return rmi_loss(xs, ys, with_logits=True, use_double_precision=double)

        fwd_fn = jax.jit(loss)
        fwdbwd_fn = jax.jit(jax.value_and_grad(loss))

    device = jax.devices()[0]
    # NHWC is the JAX API's default layout; the transpose happens here, outside the timing.
    x = jax.device_put(jnp.asarray(np.ascontiguousarray(logits.transpose(0, 2, 3, 1))), device)
    y = jax.device_put(jnp.asarray(np.ascontiguousarray(target.transpose(0, 2, 3, 1))), device)
    jax.block_until_ready((x, y))

    def xla_memory() -> dict[str, Any]:
        out: dict[str, Any] = {}
        for mode, fn in (("fwd", fwd_fn), ("fwdbwd", fwdbwd_fn)):
            stats = fn.lower(x, y).compile().memory_analysis()
            if stats is None:
                out[mode] = None
                continue
            fields = ("temp_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes")
            raw = {k: int(getattr(stats, k, 0) or 0) for k in fields}
            raw["argument_size_in_bytes"] = int(getattr(stats, "argument_size_in_bytes", 0) or 0)
            peak = getattr(stats, "peak_memory_in_bytes", None)
            raw["peak_memory_in_bytes"] = None if peak is None else int(peak)
            raw["extra_bytes"] = (
                raw["temp_size_in_bytes"] + raw["output_size_in_bytes"] - raw["alias_size_in_bytes"]
            )
            out[mode] = raw
        return out

    info = {
        "jax_backend": backend,
        "device_name": getattr(device, "device_kind", str(device)),
        "jax_enable_x64": bool(jax.config.jax_enable_x64),
    }
    return Prepared(
        lambda: fwd_fn(x, y),
        lambda: fwdbwd_fn(x, y),
        jax.block_until_ready,
        lambda: None,
        xla_memory,
        False,
        info,
    )


def prepare(spec: Spec) -> Prepared:
    """Build the closures of one row on one shape (imports its framework lazily)."""
    if spec.row not in ROWS:
        raise ValueError(f"unknown row {spec.row!r}; expected one of {ROWS}")
    logits, target = make_inputs(spec.shape, spec.seed)
    if spec.row in JAX_ROWS:
        return _prepare_jax(spec, logits, target)
    return _prepare_torch(spec, logits, target)


# --------------------------------------------------------------------------- measuring


def time_calls(
    fn: Callable[[], Any], sync: Callable[[Any], None], repeats: int, warmup: int
) -> list[float]:
    """Wall time in seconds of ``repeats`` synchronised calls, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        sync(fn())
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection inside one sample would be noise, not the loss's cost
    try:
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            sync(fn())
            samples.append(time.perf_counter() - start)
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples


def _proc_status_bytes(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # "5" resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def rss_peak_extra(prep: Prepared) -> int | None:
    """Bytes the fwd+bwd call adds to the resident high-water mark, or None if unsupported."""
    prep.clear()
    gc.collect()
    if not _reset_hwm():
        return None
    base = _proc_status_bytes("VmRSS")
    out = prep.fwdbwd()
    prep.sync(out)
    peak = _proc_status_bytes("VmHWM")
    del out
    if base is None or peak is None:
        return None
    return max(peak - base, 0)


def cuda_torch_peak_extra(prep: Prepared) -> int:
    """Bytes torch's CUDA allocator peaks at above its level before one fwd+bwd call."""
    import torch

    prep.clear()
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = prep.fwdbwd()
    prep.sync(out)
    peak = torch.cuda.max_memory_allocated()
    del out
    return max(peak - base, 0)


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 600 else text[:600] + " ..."


def measure(spec: Spec, *, in_process: bool = False) -> dict[str, Any]:
    """Run one spec in the current process; never raises for a failing row."""
    result: dict[str, Any] = {
        "row": spec.row,
        "shape": list(spec.shape),
        "status": "ok",
        "errors": {},
    }
    try:
        prep = prepare(spec)
    except SkipRow as exc:
        result.update(status="skipped", reason=str(exc))
        return result
    except Exception as exc:  # noqa: BLE001 - a row that fails to build is reported
        result.update(status="error")
        result["errors"]["prepare"] = _error_text(exc)
        return result
    result["info"] = prep.info

    if spec.task in ("time", "both"):
        for mode in spec.modes:
            fn = prep.fwd if mode == "fwd" else prep.fwdbwd
            try:
                samples = time_calls(fn, prep.sync, spec.repeats, spec.warmup)
            except Exception as exc:  # noqa: BLE001 - e.g. a float32 Cholesky failure
                result["errors"][mode] = _error_text(exc)
                continue
            result[f"{mode}_ms"] = 1e3 * statistics.median(samples)
            result[f"{mode}_samples_ms"] = [1e3 * s for s in samples]

    if spec.task in ("mem", "both"):
        result.update(_measure_memory(spec, prep, in_process=in_process))
    return result


def _measure_memory(spec: Spec, prep: Prepared, *, in_process: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"memory": {}}
    mem = out["memory"]
    errors: dict[str, str] = {}
    if prep.xla_memory is not None:
        try:
            mem["xla"] = prep.xla_memory()
        except Exception as exc:  # noqa: BLE001
            errors["xla_memory"] = _error_text(exc)
    try:
        if prep.cuda_torch:
            prep.sync(prep.fwdbwd())  # warm-up: the allocator's first blocks are not the loss's
            mem["torch_cuda_bytes"] = cuda_torch_peak_extra(prep)
        elif spec.device == "cpu":
            prep.sync(prep.fwdbwd())  # warm-up: compile / lazy initialisation stay out of it
            key = "rss_in_process_bytes" if in_process else "rss_bytes"
            mem[key] = rss_peak_extra(prep)
    except Exception as exc:  # noqa: BLE001 - the same failure the timing records
        errors["memory"] = _error_text(exc)
    if errors:
        out["memory_errors"] = errors
    return out


# --------------------------------------------------------------------------- subprocesses


def _worker_env(spec: Spec, *, memory_run: bool) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    # Explicit either way, so a JAX_ENABLE_X64 in the caller's shell cannot leak into f32 rows.
    env["JAX_ENABLE_X64"] = "1" if spec.row in X64_ROWS else "0"
    if spec.device == "cpu":
        env["JAX_PLATFORMS"] = "cpu"
    if memory_run:
        env["MALLOC_MMAP_THRESHOLD_"] = str(_MMAP_THRESHOLD_BYTES)
    return env


def run_worker(spec: Spec, *, timeout: float, memory_run: bool = False) -> dict[str, Any]:
    """Measure one spec in a fresh subprocess; failures come back as an error result."""
    cmd = [sys.executable, "-m", "benchmarks.bench", "--worker", spec.to_json()]
    base: dict[str, Any] = {"row": spec.row, "shape": list(spec.shape), "errors": {}}
    try:
        proc = subprocess.run(
            cmd,
            cwd=REPO_ROOT,
            env=_worker_env(spec, memory_run=memory_run),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        base.update(status="error")
        base["errors"]["worker"] = f"{spec.task} worker timed out after {timeout:.0f} s"
        return base
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_RESULT_MARKER):
            return json.loads(line[len(_RESULT_MARKER) :])
    tail = (proc.stderr or proc.stdout or "").strip()[-800:]
    base.update(status="error")
    base["errors"]["worker"] = f"{spec.task} worker exited with {proc.returncode}: {tail}"
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
    """One (row, shape) result, measured according to the isolation options."""
    spec = Spec(
        row=row,
        shape=(int(shape[0]), int(shape[1]), int(shape[2]), int(shape[3])),
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
        timed = run_worker(_with(spec, task="time"), timeout=args.timeout)
        mem = run_worker(_with(spec, task="mem"), timeout=args.timeout, memory_run=True)
        result = _merge(timed, mem)
    else:
        result = run_worker(spec, timeout=args.timeout)
    return _finalise(result, spec)


def _with(spec: Spec, **changes: Any) -> Spec:
    return Spec(**{**spec.__dict__, **changes})


def _finalise(result: dict[str, Any], spec: Spec) -> dict[str, Any]:
    """Status, the primary peak-memory figure, and its multiple of one input."""
    if result.get("status") == "skipped":
        return result
    want = [f"{m}_ms" for m in spec.modes]
    have = [k for k in want if isinstance(result.get(k), (int, float))]
    result["status"] = "ok" if len(have) == len(want) else ("partial" if have else "error")

    mem = result.get("memory") or {}
    primary: int | None = None
    method: str | None = None
    xla = (mem.get("xla") or {}).get("fwdbwd")
    if spec.row in JAX_ROWS and xla:
        primary, method = xla["extra_bytes"], "xla-memory-analysis"
    elif mem.get("torch_cuda_bytes") is not None:
        primary, method = mem["torch_cuda_bytes"], "torch-cuda-max-allocated"
    elif mem.get("rss_bytes") is not None:
        primary, method = mem["rss_bytes"], "rss-hwm"
    elif mem.get("rss_in_process_bytes") is not None:
        primary, method = mem["rss_in_process_bytes"], "rss-hwm-in-process"
    unit = input_bytes(spec.shape)
    if primary is not None:
        result["peak_extra_mib"] = primary / _MIB
        result["peak_extra_x_input"] = primary / unit
        result["memory_method"] = method
    rss = mem.get("rss_bytes", mem.get("rss_in_process_bytes"))
    if rss is not None:
        result["rss_extra_mib"] = rss / _MIB
        result["rss_extra_x_input"] = rss / unit
    return result


def add_comparisons(results: list[dict[str, Any]]) -> None:
    """Speed-ups vs the baselines and the ratio to the floor, per shape, in place."""
    by_shape: dict[tuple[int, ...], dict[str, dict[str, Any]]] = {}
    for res in results:
        by_shape.setdefault(tuple(res["shape"]), {})[res["row"]] = res
    for rows in by_shape.values():
        for res in rows.values():
            for mode in ("fwd", "fwdbwd"):
                t = res.get(f"{mode}_ms")
                if not isinstance(t, (int, float)) or t <= 0:
                    continue
                for ref, key in (
                    (REF_F64, "speedup_vs_baseline_f64"),
                    (REF_F32, "speedup_vs_baseline_f32"),
                ):
                    t_ref = rows.get(ref, {}).get(f"{mode}_ms")
                    if isinstance(t_ref, (int, float)):
                        res[f"{mode}_{key}"] = t_ref / t
                t_floor = rows.get(REF_FLOOR, {}).get(f"{mode}_ms")
                if isinstance(t_floor, (int, float)) and t_floor > 0:
                    res[f"{mode}_ratio_to_floor"] = t / t_floor


# --------------------------------------------------------------------------- metadata


def _probe() -> dict[str, Any]:
    """Framework versions and what devices they see (run in a subprocess by the parent)."""
    info: dict[str, Any] = {}
    try:
        import torch

        info["torch_version"] = torch.__version__
        info["torch_cuda_available"] = bool(torch.cuda.is_available())
        info["torch_num_threads"] = torch.get_num_threads()
        if info["torch_cuda_available"]:
            info["torch_cuda_device"] = torch.cuda.get_device_name(0)
    except Exception as exc:  # noqa: BLE001
        info["torch_error"] = _error_text(exc)
    try:
        import jax

        info["jax_version"] = jax.__version__
        info["jax_backend"] = jax.default_backend()
        info["jax_devices"] = [getattr(d, "device_kind", str(d)) for d in jax.devices()]
    except Exception as exc:  # noqa: BLE001
        info["jax_error"] = _error_text(exc)
    return info


def _run_probe(env_extra: dict[str, str]) -> dict[str, Any]:
    env = {**os.environ, **env_extra}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "benchmarks.bench", "--probe"]
    proc = subprocess.run(
        cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_RESULT_MARKER):
            return json.loads(line[len(_RESULT_MARKER) :])
    return {"probe_error": (proc.stderr or "").strip()[-800:]}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def resolve_device(requested: str, probe: dict[str, Any]) -> str:
    """``auto`` becomes ``cuda`` when torch or JAX sees a GPU, else ``cpu``."""
    if requested != "auto":
        return requested
    gpu = probe.get("torch_cuda_available") or probe.get("jax_backend") == "gpu"
    return "cuda" if gpu else "cpu"


def collect_meta(args: argparse.Namespace, probe: dict[str, Any]) -> dict[str, Any]:
    """Machine and software description stored with the numbers."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    device_name = _cpu_model()
    if args.device == "cuda":
        device_name = probe.get("torch_cuda_device") or ", ".join(probe.get("jax_devices", []))
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": args.device,
        "device_name": device_name,
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity_count": affinity,
        "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax_version": probe.get("jax_version") or _version("jax"),
        "jaxlib_version": _version("jaxlib"),
        "torch_version": probe.get("torch_version") or _version("torch"),
        "numpy_version": np.__version__,
        "torch_num_threads": probe.get("torch_num_threads"),
        "jax_devices": probe.get("jax_devices"),
        "repeats": args.repeats,
        "warmup": args.warmup,
        "seed": args.seed,
        "batch": args.batch,
        "classes": args.classes,
        "sizes": list(args.sizes),
        "rows": list(args.rows),
        "isolation": "in-process (x64 rows in a subprocess)"
        if args.in_process
        else ("fresh subprocess per (row, shape); on CPU a second one for memory"),
        "inputs": "logits ~ N(0, 1) float32, target i.i.d. binary float32, NCHW (NHWC for JAX)",
        "loss_options": "with_logits=True, all other options at their defaults",
        "command": " ".join([Path(sys.executable).name, "-m", "benchmarks.bench", *args.argv]),
    }


# --------------------------------------------------------------------------- output


def _fmt(value: Any, spec: str) -> str:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return format("-", ">" + spec.split(".")[0])  # keep the column's width
    return format(value, spec)


def format_table(results: list[dict[str, Any]]) -> str:
    """A fixed-width table, one line per (shape, row)."""
    head = (
        f"{'shape':<15} {'row':<14} {'fwd ms':>10} {'fwd+bwd ms':>11} {'peak MiB':>9} "
        f"{'x input':>8} {'rss MiB':>8} {'vs b-f64':>9} {'vs b-f32':>9} {'/ floor':>8}  note"
    )
    lines = [head, "-" * len(head)]
    for res in results:
        shape = "x".join(str(s) for s in res["shape"])
        note = ""
        if res.get("status") == "skipped":
            note = f"skipped: {res.get('reason', '')}"
        elif res.get("errors"):
            note = "; ".join(f"{k}: {v}" for k, v in res["errors"].items())
            note = note if len(note) <= 120 else note[:117] + "..."
        lines.append(
            f"{shape:<15} {res['row']:<14} {_fmt(res.get('fwd_ms'), '10.3f')} "
            f"{_fmt(res.get('fwdbwd_ms'), '11.3f')} {_fmt(res.get('peak_extra_mib'), '9.2f')} "
            f"{_fmt(res.get('peak_extra_x_input'), '8.2f')} "
            f"{_fmt(res.get('rss_extra_mib'), '8.2f')} "
            f"{_fmt(res.get('fwdbwd_speedup_vs_baseline_f64'), '9.2f')} "
            f"{_fmt(res.get('fwdbwd_speedup_vs_baseline_f32'), '9.2f')} "
            f"{_fmt(res.get('fwdbwd_ratio_to_floor'), '8.2f')}  {note}".rstrip()
        )
    return "\n".join(lines)


def format_scaling(scaling: list[dict[str, Any]]) -> str:
    """The scaling section: fwd+bwd time and time per element, which is flat if linear."""
    head = f"{'sweep':<8} {'shape':<15} {'fwd+bwd ms':>11} {'ns / element':>13}  note"
    lines = ["rmi_jax fwd+bwd scaling (element = one logit, N*C*H*W per call)", head]
    lines.append("-" * len(head))
    for res in scaling:
        shape = "x".join(str(s) for s in res["shape"])
        note = res.get("reason", "") if res.get("status") == "skipped" else ""
        if res.get("errors"):
            note = "; ".join(f"{k}: {v}" for k, v in res["errors"].items())[:120]
        lines.append(
            f"{res['sweep']:<8} {shape:<15} {_fmt(res.get('fwdbwd_ms'), '11.3f')} "
            f"{_fmt(res.get('ns_per_element'), '13.3f')}  {note}".rstrip()
        )
    return "\n".join(lines)


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- driver


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Measure every (shape, row), then the scaling sweep if asked; return the JSON payload."""
    results: list[dict[str, Any]] = []
    if not args.no_table:
        for size in args.sizes:
            shape = (args.batch, args.classes, size, size)
            for row in args.rows:
                _progress(f"[bench] {'x'.join(map(str, shape))} {row} ...")
                results.append(measure_row(row, shape, args))
        add_comparisons(results)

    scaling: list[dict[str, Any]] = []
    if args.scaling:
        sweeps = [("size", (args.batch, SCALING_FIXED_CLASSES, s, s)) for s in args.scaling_sizes]
        sweeps += [
            ("classes", (args.batch, c, SCALING_FIXED_SIZE, SCALING_FIXED_SIZE))
            for c in SCALING_CLASSES
        ]
        for sweep, shape in sweeps:
            _progress(f"[bench] scaling {'x'.join(map(str, shape))} rmi_jax ...")
            res = measure_row("rmi_jax", shape, args, modes=("fwdbwd",))
            res["sweep"] = sweep
            t = res.get("fwdbwd_ms")
            if isinstance(t, (int, float)):
                res["ns_per_element"] = t * 1e6 / float(np.prod(shape))
            scaling.append(res)

    return {
        "meta": args.meta,
        "methods": {"time": TIME_METHOD, "memory": MEMORY_METHODS},
        "columns": {
            "fwd_ms / fwdbwd_ms": "median milliseconds of the forward / forward+backward",
            "peak_extra_mib": "primary peak extra memory of fwd+bwd, by memory_method",
            "peak_extra_x_input": "peak_extra as a multiple of one float32 logits tensor",
            "rss_extra_mib": "CPU only: resident-set growth (rss-hwm) for every row, "
            "a cross-check of the XLA figure for JAX rows",
            "*_speedup_vs_baseline_f64/f32": "baseline time / row time (higher is faster)",
            "*_ratio_to_floor": "row time / floor time (1 = as fast as one elementwise pass)",
        },
        "results": results,
        "scaling": scaling,
    }


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=None,
                        help=f"square sizes S (default {' '.join(map(str, DEFAULT_SIZES))}, "
                        f"plus {GPU_EXTRA_SIZE} on a GPU)")  # fmt: skip
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
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """Entry point; returns the JSON payload (None in worker/probe mode)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.worker is not None:
        print(_RESULT_MARKER + json.dumps(measure(Spec.from_json(args.worker))), flush=True)
        return None
    if args.probe:
        print(_RESULT_MARKER + json.dumps(_probe()), flush=True)
        return None

    probe = _probe() if args.in_process else _run_probe({})
    args.device = resolve_device(args.device, probe)
    if args.sizes is None:
        args.sizes = list(DEFAULT_SIZES) + ([GPU_EXTRA_SIZE] if args.device == "cuda" else [])
    if args.out is None:
        args.out = REPO_ROOT / "benchmarks" / f"results-{args.device}.json"
    args.argv = argv
    args.meta = collect_meta(args, probe)

    payload = run_benchmark(args)
    print(f"device: {args.meta['device_name']} ({args.device}), cpus {args.meta['cpu_count']}, "
          f"jax {args.meta['jax_version']}, torch {args.meta['torch_version']}, "
          f"repeats {args.repeats}")  # fmt: skip
    load = args.meta["loadavg_at_start"]
    if load and args.meta["cpu_count"] and load[0] > 0.5 * args.meta["cpu_count"]:
        # Other processes on the machine make CPU timings noisy; say so next to the numbers.
        print(f"warning: 1-minute load average was {load[0]:.2f} at the start on "
              f"{args.meta['cpu_count']} CPUs: timings may be noisy")  # fmt: skip
    if payload["results"]:
        print(format_table(payload["results"]))
        print("times: median ms; peak MiB: extra memory of one fwd+bwd (JAX rows: XLA analysis; "
              "torch rows: RSS growth on CPU, allocator peak on CUDA); vs b-*: fwd+bwd speed-up; "
              "/ floor: fwd+bwd time over the elementwise floor")  # fmt: skip
    if payload["scaling"]:
        print(format_scaling(payload["scaling"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")
    return payload


if __name__ == "__main__":
    main()
