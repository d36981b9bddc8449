"""What the figures come from: the CPU (model and SIMD flags), the devices and the versions.

The frameworks are probed in a subprocess (``python -m benchmarks.bench --probe``), so that the
parent process, which only starts workers, never initialises JAX or CUDA itself.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.measure import error_text
from benchmarks.workers import run_marked, subprocess_env

# The CPU features that decide which matrix-product and elementwise kernels run (x86 flags as
# /proc/cpuinfo names them; ``asimd``, ``sve`` and ``sme`` on Arm): the speed of the same code
# differs across CPUs mostly by these, so every figure records which of them its CPU has.
SIMD_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "amx_fp16",
    "asimd",
    "sve",
    "sve2",
    "sme",
)
PROBE_TIMEOUT_S = 300


def _cpuinfo_value(*keys: str) -> str | None:
    """The first value of any of ``keys`` in /proc/cpuinfo (None off Linux)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                name, _, value = line.partition(":")
                if name.strip() in keys:
                    return value.strip()
    except OSError:
        return None
    return None


def cpu_model() -> str:
    """The CPU's model name (as the kernel reports it; virtual machines may shorten it)."""
    return _cpuinfo_value("model name") or platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """Which of ``SIMD_FLAGS`` this CPU reports, in that order."""
    present = set((_cpuinfo_value("flags", "Features") or "").split())
    return [flag for flag in SIMD_FLAGS if flag in present]


def cpu_description() -> str:
    """Model and SIMD flags on one line, for printed output."""
    return f"{cpu_model()} [{' '.join(cpu_flags()) or 'no SIMD flags found'}]"


def _torch_probe() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "torch_version": torch.__version__,
        "torch_cuda_version": torch.version.cuda,
        "torch_cuda_available": bool(torch.cuda.is_available()),
        "torch_num_threads": torch.get_num_threads(),
        "torch_float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    if info["torch_cuda_available"]:
        info["torch_cuda_device"] = torch.cuda.get_device_name(0)
        info["torch_cuda_memory_bytes"] = torch.cuda.get_device_properties(0).total_memory
    return info


def _jax_probe() -> dict[str, Any]:
    import jax

    return {
        "jax_version": jax.__version__,
        "jax_backend": jax.default_backend(),
        "jax_devices": [getattr(d, "device_kind", str(d)) for d in jax.devices()],
        "jax_default_matmul_precision": jax.config.jax_default_matmul_precision,
    }


def probe() -> dict[str, Any]:
    """Framework versions and what devices they see (run in a subprocess by the parent)."""
    info: dict[str, Any] = {}
    for name, function in (("torch", _torch_probe), ("jax", _jax_probe)):
        try:
            info.update(function())
        except Exception as exc:  # noqa: BLE001 - a missing framework is recorded, not fatal
            info[f"{name}_error"] = error_text(exc)
    return info


def run_probe() -> dict[str, Any]:
    """:func:`probe` in a fresh subprocess."""
    try:
        result, failure = run_marked(["--probe"], subprocess_env(), PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        result, failure = None, f"timed out after {PROBE_TIMEOUT_S} s"
    return result if result is not None else {"probe_error": failure}


def resolve_device(requested: str, probe_info: dict[str, Any]) -> str:
    """``auto`` becomes ``cuda`` when torch or JAX sees a GPU, else ``cpu``."""
    if requested != "auto":
        return requested
    gpu = probe_info.get("torch_cuda_available") or probe_info.get("jax_backend") == "gpu"
    return "cuda" if gpu else "cpu"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _jax_cuda_plugins() -> dict[str, str]:
    """Versions of the installed JAX CUDA plugins (they carry the CUDA libraries JAX uses)."""
    names = ("jax-cuda12-plugin", "jax-cuda12-pjrt", "jax-cuda13-plugin", "jax-cuda13-pjrt")
    return {name: v for name in names if (v := _version(name)) is not None}


def collect_meta(args: argparse.Namespace, probe_info: dict[str, Any]) -> dict[str, Any]:
    """Machine and software description stored with the numbers."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    device_name = cpu_model()
    if args.device == "cuda":
        device_name = probe_info.get("torch_cuda_device") or ", ".join(
            probe_info.get("jax_devices", [])
        )
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": args.device,
        "device_name": device_name,
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity_count": affinity,
        "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax_version": probe_info.get("jax_version") or _version("jax"),
        "jaxlib_version": _version("jaxlib"),
        "jax_cuda_plugins": _jax_cuda_plugins(),
        "torch_version": probe_info.get("torch_version") or _version("torch"),
        "torch_cuda_version": probe_info.get("torch_cuda_version"),
        "numpy_version": np.__version__,
        "torch_num_threads": probe_info.get("torch_num_threads"),
        "jax_devices": probe_info.get("jax_devices"),
        "matmul_precision": {
            "torch_float32": probe_info.get("torch_float32_matmul_precision"),
            "jax_default": probe_info.get("jax_default_matmul_precision"),
        },
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
