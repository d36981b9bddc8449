"""Timing and peak memory of one prepared row, in the current process, and how each is taken.

:func:`measure` runs one :class:`~benchmarks.rows.Spec` and never raises for a failing row: the
error text goes into the result. :func:`finalise` gives the result its status and picks the
primary peak-memory figure by the methods of ``MEMORY_METHODS``.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

from benchmarks.rows import JAX_ROWS, Prepared, SkipRow, Spec, input_bytes, prepare

MIB = float(1 << 20)

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
    "jax-device-peak": (
        "CUDA JAX rows: peak_bytes_in_use of the device's memory_stats() after one call of the "
        "compiled fwd+bwd executable, minus bytes_in_use before it, in the row's fresh worker "
        "process, before any timing (JAX cannot reset the peak). The executable is compiled "
        "first; where the compilation's own scratch had already set a higher peak, the call's "
        "peak is not visible and the row falls back to xla-memory-analysis."
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


def error_text(exc: BaseException) -> str:
    """One exception as a short line for the results."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 600 else text[:600] + " ..."


def _measure_time(spec: Spec, prep: Prepared, result: dict[str, Any]) -> None:
    for mode in spec.modes:
        fn = prep.fwd if mode == "fwd" else prep.fwdbwd
        try:
            samples = time_calls(fn, prep.sync, spec.repeats, spec.warmup)
        except Exception as exc:  # noqa: BLE001 - e.g. a float32 Cholesky failure
            result["errors"][mode] = error_text(exc)
            continue
        result[f"{mode}_ms"] = 1e3 * statistics.median(samples)
        result[f"{mode}_samples_ms"] = [1e3 * s for s in samples]


def _measure_memory(spec: Spec, prep: Prepared, *, in_process: bool) -> dict[str, Any]:
    mem: dict[str, Any] = {}
    errors: dict[str, str] = {}
    # First, while the device's peak still belongs to nothing but the inputs and compilations.
    if prep.device_peak is not None:
        try:
            mem["jax_device_peak"] = prep.device_peak()
        except Exception as exc:  # noqa: BLE001
            errors["jax_device_peak"] = error_text(exc)
    if prep.xla_memory is not None:
        try:
            mem["xla"] = prep.xla_memory()
        except Exception as exc:  # noqa: BLE001
            errors["xla_memory"] = error_text(exc)
    try:
        if prep.cuda_torch:
            prep.sync(prep.fwdbwd())  # warm-up: the allocator's first blocks are not the loss's
            mem["torch_cuda_bytes"] = cuda_torch_peak_extra(prep)
        elif spec.device == "cpu":
            prep.sync(prep.fwdbwd())  # warm-up: compile / lazy initialisation stay out of it
            key = "rss_in_process_bytes" if in_process else "rss_bytes"
            mem[key] = rss_peak_extra(prep)
    except Exception as exc:  # noqa: BLE001 - the same failure the timing records
        errors["memory"] = error_text(exc)
    out: dict[str, Any] = {"memory": mem}
    if errors:
        out["memory_errors"] = errors
    return out


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
        result["errors"]["prepare"] = error_text(exc)
        return result
    result["info"] = prep.info

    timed = spec.task in ("time", "both")
    memory = spec.task in ("mem", "both")
    # On a GPU the memory comes first: JAX's device peak cannot be reset after the timing.
    if memory and spec.device == "cuda":
        result.update(_measure_memory(spec, prep, in_process=in_process))
    if timed:
        _measure_time(spec, prep, result)
    if memory and spec.device != "cuda":
        result.update(_measure_memory(spec, prep, in_process=in_process))
    return result


def _primary_memory(row: str, mem: dict[str, Any]) -> tuple[int | None, str | None]:
    """The peak-extra figure the table shows, and its method (a key of ``MEMORY_METHODS``)."""
    if row in JAX_ROWS:
        peak = mem.get("jax_device_peak")
        if peak and peak["peak_after"] > peak["peak_before"]:
            return peak["peak_after"] - peak["bytes_in_use_before"], "jax-device-peak"
        xla = (mem.get("xla") or {}).get("fwdbwd")
        if xla:
            return xla["extra_bytes"], "xla-memory-analysis"
    for key, method in (
        ("torch_cuda_bytes", "torch-cuda-max-allocated"),
        ("rss_bytes", "rss-hwm"),
        ("rss_in_process_bytes", "rss-hwm-in-process"),
    ):
        if mem.get(key) is not None:
            return mem[key], method
    return None, None


def finalise(result: dict[str, Any], spec: Spec) -> dict[str, Any]:
    """Status, the primary peak-memory figure, and its multiple of one input."""
    if result.get("status") == "skipped":
        return result
    want = [f"{m}_ms" for m in spec.modes]
    have = [k for k in want if isinstance(result.get(k), (int, float))]
    result["status"] = "ok" if len(have) == len(want) else ("partial" if have else "error")

    mem = result.get("memory") or {}
    primary, method = _primary_memory(spec.row, mem)
    unit = input_bytes(spec.shape)
    if primary is not None:
        result["peak_extra_mib"] = primary / MIB
        result["peak_extra_x_input"] = primary / unit
        result["memory_method"] = method
    rss = mem.get("rss_bytes", mem.get("rss_in_process_bytes"))
    if rss is not None:
        result["rss_extra_mib"] = rss / MIB
        result["rss_extra_x_input"] = rss / unit
    return result
