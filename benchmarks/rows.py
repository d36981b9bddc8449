"""The benchmark's rows and inputs: what each row runs, and one row made ready to call.

A row is one loss implementation in one precision (see ``ROWS``). :func:`prepare` builds its
closures over device-resident inputs, importing the row's framework only then, so that a
process measuring a torch row never imports JAX and the other way round.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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

DEFAULT_WARMUP = 2  # the first call compiles (JAX) or initialises kernels (torch); one more settles


class SkipRow(Exception):
    """A row cannot run here (backend missing, no such device): reported, not an error."""


@dataclass
class Spec:
    """One measurement request, serialisable for the worker subprocess."""

    row: str
    shape: tuple[int, ...]  # [N, C, H, W], or [N, C, D, H, W] for volumes
    device: str  # "cpu" or "cuda"
    repeats: int = 7
    warmup: int = DEFAULT_WARMUP
    seed: int = 0
    modes: tuple[str, ...] = ("fwd", "fwdbwd")
    task: str = "both"  # "time", "mem" or "both"

    def to_json(self) -> str:
        """The spec as a JSON string for the worker subprocess."""
        return json.dumps({**self.__dict__, "shape": list(self.shape), "modes": list(self.modes)})

    @classmethod
    def from_json(cls, text: str) -> Spec:
        """Inverse of :meth:`to_json`."""
        raw = json.loads(text)
        raw["shape"] = tuple(raw["shape"])
        raw["modes"] = tuple(raw["modes"])
        return cls(**raw)

    def with_changes(self, **changes: Any) -> Spec:
        """A copy with some fields replaced."""
        return Spec(**{**self.__dict__, **changes})


@dataclass
class Prepared:
    """A row ready to run: closures over device-resident inputs.

    ``xla_memory``: JAX rows only, the compiled executables' memory analysis.
    ``device_peak``: JAX rows only, the device allocator's peak over one compiled fwd+bwd call
    (``None`` where the device keeps no statistics, as on the CPU).
    """

    fwd: Callable[[], Any]
    fwdbwd: Callable[[], Any]
    sync: Callable[[Any], None]
    clear: Callable[[], None] = lambda: None  # drops leftovers (torch's .grad) before a memory run
    xla_memory: Callable[[], dict[str, Any]] | None = None
    device_peak: Callable[[], dict[str, Any] | None] | None = None
    cuda_torch: bool = False
    info: dict[str, Any] = field(default_factory=dict)


def make_inputs(shape: Sequence[int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Standard-normal float32 logits and an i.i.d. binary float32 target, channels first.

    The i.i.d. binary target is the one of the ``rmi-pytorch`` README's own timing example.
    """
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal(tuple(shape), dtype=np.float32)
    target = rng.integers(0, 2, size=tuple(shape)).astype(np.float32)
    return logits, target


def input_bytes(shape: Sequence[int]) -> int:
    """Size of one float32 input tensor (the logits), the unit of the ``x input`` column."""
    return int(np.prod(shape)) * 4


def _torch_loss(row: str) -> Callable[..., Any]:
    if row.startswith("baseline"):
        from parity_tests.baseline_torch import baseline_rmi_loss

        return functools.partial(baseline_rmi_loss, double=row == "baseline-f64")
    try:
        import rmi_torch

        rmi_loss = rmi_torch.rmi_loss
    except (ImportError, AttributeError) as exc:
        raise SkipRow(f"rmi_torch.rmi_loss not importable: {exc}") from exc
    return functools.partial(
        rmi_loss, with_logits=True, use_double_precision=row == "rmi_torch-f64"
    )


def _prepare_torch(spec: Spec, logits: np.ndarray, target: np.ndarray) -> Prepared:
    import torch

    if spec.device == "cuda" and not torch.cuda.is_available():
        raise SkipRow("torch has no CUDA device")
    dev = torch.device(spec.device)
    loss = _torch_loss(spec.row)
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

    info: dict[str, Any] = {"torch_num_threads": torch.get_num_threads()}
    if cuda:
        info["device_name"] = torch.cuda.get_device_name(dev)
    return Prepared(fwd, fwdbwd, sync, clear, cuda_torch=cuda, info=info)


def _jax_functions(row: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """The jitted fwd and fwd+bwd of a JAX row."""
    import jax

    if row == "floor":
        # One fused elementwise pass: read logits and target, write a gradient-sized output.
        # It is the memory-traffic floor of any fwd+bwd, so it times fwd and fwd+bwd alike.
        def floor(xs: jax.Array, ys: jax.Array) -> jax.Array:
            return jax.nn.sigmoid(xs) - ys

        return jax.jit(floor), jax.jit(floor)
    try:
        import rmi_jax

        rmi_loss = rmi_jax.rmi_loss
    except (ImportError, AttributeError) as exc:
        raise SkipRow(f"rmi_jax.rmi_loss not importable: {exc}") from exc
    double = row in X64_ROWS

    def loss(xs: jax.Array, ys: jax.Array) -> jax.Array:
        return rmi_loss(xs, ys, with_logits=True, use_double_precision=double)

    return jax.jit(loss), jax.jit(jax.value_and_grad(loss))


def _xla_memory(fn: Any, *args: Any) -> dict[str, Any] | None:
    """The compiled executable's memory analysis, and the bytes one call adds to its arguments."""
    stats = fn.lower(*args).compile().memory_analysis()
    if stats is None:
        return None
    fields = (
        "temp_size_in_bytes",
        "output_size_in_bytes",
        "alias_size_in_bytes",
        "argument_size_in_bytes",
    )
    raw: dict[str, Any] = {k: int(getattr(stats, k, 0) or 0) for k in fields}
    peak = getattr(stats, "peak_memory_in_bytes", None)
    raw["peak_memory_in_bytes"] = None if peak is None else int(peak)
    raw["extra_bytes"] = (
        raw["temp_size_in_bytes"] + raw["output_size_in_bytes"] - raw["alias_size_in_bytes"]
    )
    return raw


def _device_peak(device: Any, fn: Any, *args: Any) -> dict[str, Any] | None:
    """The device allocator's bytes in use and peak before, and its peak after, one call of the
    compiled ``fn`` (compiled first, so the compilation's own scratch is already in the peak)."""
    import jax

    compiled = fn.lower(*args).compile()
    before = device.memory_stats()
    if not before or "peak_bytes_in_use" not in before:
        return None
    out = compiled(*args)
    jax.block_until_ready(out)
    after = device.memory_stats()
    del out
    return {
        "bytes_in_use_before": int(before["bytes_in_use"]),
        "peak_before": int(before["peak_bytes_in_use"]),
        "peak_after": int(after["peak_bytes_in_use"]),
    }


def _prepare_jax(spec: Spec, logits: np.ndarray, target: np.ndarray) -> Prepared:
    import jax
    import jax.numpy as jnp

    backend = jax.default_backend()
    if (spec.device == "cuda") != (backend == "gpu"):
        raise SkipRow(f"device {spec.device!r} asked but JAX's default backend is {backend!r}")
    if spec.row in X64_ROWS and not jax.config.jax_enable_x64:
        raise SkipRow("needs jax_enable_x64 (run without --in-process, or set JAX_ENABLE_X64=1)")
    fwd_fn, fwdbwd_fn = _jax_functions(spec.row)
    functions = {"fwd": fwd_fn, "fwdbwd": fwdbwd_fn}

    device = jax.devices()[0]
    # Channels last is the JAX API's default layout; the transpose happens here, outside the
    # timing.
    last = (0, *range(2, logits.ndim), 1)
    x = jax.device_put(jnp.asarray(np.ascontiguousarray(logits.transpose(last))), device)
    y = jax.device_put(jnp.asarray(np.ascontiguousarray(target.transpose(last))), device)
    jax.block_until_ready((x, y))

    info = {
        "jax_backend": backend,
        "device_name": getattr(device, "device_kind", str(device)),
        "jax_enable_x64": bool(jax.config.jax_enable_x64),
    }
    return Prepared(
        fwd=lambda: fwd_fn(x, y),
        fwdbwd=lambda: fwdbwd_fn(x, y),
        sync=jax.block_until_ready,
        xla_memory=lambda: {mode: _xla_memory(fn, x, y) for mode, fn in functions.items()},
        device_peak=lambda: _device_peak(device, fwdbwd_fn, x, y),
        info=info,
    )


def prepare(spec: Spec) -> Prepared:
    """Build the closures of one row on one shape (imports its framework lazily)."""
    if spec.row not in ROWS:
        raise ValueError(f"unknown row {spec.row!r}; expected one of {ROWS}")
    logits, target = make_inputs(spec.shape, spec.seed)
    if spec.row in JAX_ROWS:
        return _prepare_jax(spec, logits, target)
    return _prepare_torch(spec, logits, target)
