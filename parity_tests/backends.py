"""Run either backend on a fixture: NumPy in, NumPy out, NCHW, gradients w.r.t. the prediction.

Each result is computed once per test session and kept (``functools.cache``, keyed by the
fixture's name and the arguments): several tests check the same result against different
facts, and a JAX result costs a compilation per fixture, dtype and layout. The arrays handed
out are read-only so that no test can change what the next one reads.

JAX runs jitted unless ``jit=False`` (the eager-vs-jit tests need a real eager computation),
on its default device. PyTorch tensors are created on ``RMI_TEST_DEVICE`` (an environment
variable, ``cpu`` by default; ``cuda`` runs the torch side of the parity tests on the GPU), and
the results are moved back with ``.cpu()``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import numpy as np

from parity_tests.fixtures import Fixture, load_fixtures

TORCH_DEVICE = os.environ.get("RMI_TEST_DEVICE", "cpu")

Result = tuple[np.ndarray, np.ndarray]


def _read_only(value, grad) -> Result:
    arrays = np.array(value), np.array(grad)
    for array in arrays:
        array.setflags(write=False)
    return arrays


@functools.cache
def _fixture(name: str) -> Fixture:
    return load_fixtures(f"{name}.npz")[0]


def _jax_settings() -> tuple:
    """The process settings a JAX result depends on, for the cache key: x64 (the float32 route
    runs under either setting), the default matmul precision and the size from which the
    statistics take lag products (test_lag_products.py lowers it)."""
    import jax

    from rmi_core import numerics

    return (
        jax.config.jax_enable_x64,
        jax.config.jax_default_matmul_precision,
        numerics.LAG_PRODUCTS_MIN_WINDOWS,
    )


def _torch_settings() -> tuple:
    """The settings a torch result depends on, for the cache key: the float32 matmul precision
    (tests/test_precision.py computes under reduced ones) and the size from which the
    statistics take lag products."""
    import torch

    from rmi_core import numerics

    return torch.get_float32_matmul_precision(), numerics.LAG_PRODUCTS_MIN_WINDOWS


def _jax_run(loss: Callable, x, *args, jit: bool):
    """``loss``'s aux output and the gradient of its first output w.r.t. ``x``, as NumPy.

    The other inputs are arguments rather than constants, so that jit cannot fold them in.
    """
    import jax

    value_and_grad = jax.grad(loss, has_aux=True)
    grad, aux = (jax.jit(value_and_grad) if jit else value_and_grad)(x, *args)
    return jax.tree.map(np.asarray, aux), np.asarray(grad)


REDUCTIONS = ("mean", "sum", "none")


def jax_value_and_grad(fixture: Fixture, *, double: bool, jit: bool = True) -> Result:
    """Value (``reduction="mean"``) and gradient w.r.t. the prediction, from JAX."""
    values, grad = _jax_dense(fixture.name, double, jit, _jax_settings())
    return values["mean"], grad


def jax_reductions(fixture: Fixture, *, double: bool) -> dict[str, np.ndarray]:
    """The value under each ``reduction`` (``REDUCTIONS``), from JAX: one jitted program with
    :func:`jax_value_and_grad`'s (the losses share their computation up to the reduction)."""
    values, _ = _jax_dense(fixture.name, double, True, _jax_settings())
    return values


@functools.cache
def _jax_dense(name: str, double: bool, jit: bool, settings: tuple):
    import jax.numpy as jnp

    from rmi_jax import rmi_loss

    fixture = _fixture(name)
    dtype = jnp.float64 if double else jnp.float32
    options = {
        **fixture.options,
        **fixture.mask_argument(jnp.asarray),
        "use_double_precision": double,
        "channel_axis": 1,
    }
    # Eagerly each loss is computed apart, op by op: the mean alone.
    reductions = REDUCTIONS if jit else ("mean",)

    def loss(pred, target):
        values = {r: rmi_loss(pred, target, **options, reduction=r) for r in reductions}
        return values["mean"], values

    pred, target = (jnp.asarray(a, dtype) for a in (fixture.pred, fixture.target))
    values, grad = _jax_run(loss, pred, target, jit=jit)
    for array in (*values.values(), grad):
        array.setflags(write=False)
    return values, grad


def torch_value_and_grad(fixture: Fixture, *, double: bool, reduction: str = "mean") -> Result:
    """Value (``reduction``) and gradient of the summed value w.r.t. the prediction, from torch."""
    return _torch_dense(fixture.name, double, reduction, _torch_settings())


def torch_tensor(array: np.ndarray, dtype=None, *, requires_grad: bool = False):
    """``array`` as a tensor on ``RMI_TEST_DEVICE``."""
    import torch

    return torch.tensor(array, dtype=dtype, device=TORCH_DEVICE, requires_grad=requires_grad)


def _torch_run(loss: Callable, x) -> Result:
    value = loss(x)
    value.sum().backward()
    return _read_only(value.detach().cpu().numpy(), x.grad.cpu().numpy())


@functools.cache
def _torch_dense(name: str, double: bool, reduction: str, settings: tuple) -> Result:
    import torch

    from rmi_torch import rmi_loss

    fixture = _fixture(name)
    dtype = torch.float64 if double else torch.float32
    target = torch_tensor(fixture.target, dtype)
    mask = fixture.mask_argument(torch_tensor)

    def loss(pred):
        return rmi_loss(
            pred,
            target,
            **fixture.options,
            **mask,
            use_double_precision=double,
            reduction=reduction,
        )

    return _torch_run(loss, torch_tensor(fixture.pred, dtype, requires_grad=True))


def jax_label_value_and_grad(
    fixture: Fixture, *, double: bool, channel_axis: int = 1, jit: bool = True
) -> Result:
    """Label-map value and gradient w.r.t. the NCHW logits from JAX (float64 needs x64).

    With ``channel_axis`` other than 1 the logits are handed over with the classes moved there
    (the gradient still comes back NCHW).
    """
    return _jax_labels(fixture.name, double, channel_axis, jit, _jax_settings())


@functools.cache
def _jax_labels(name: str, double: bool, channel_axis: int, jit: bool, settings: tuple) -> Result:
    import jax.numpy as jnp

    from rmi_jax import rmi_loss_from_labels

    fixture = _fixture(name)

    def loss(x, labels):
        x = jnp.moveaxis(x, 1, channel_axis)
        value = rmi_loss_from_labels(x, labels, **fixture.options, channel_axis=channel_axis)
        return value, value

    logits = jnp.asarray(fixture.pred, jnp.float64 if double else jnp.float32)
    return _read_only(*_jax_run(loss, logits, jnp.asarray(fixture.target), jit=jit))


def torch_label_value_and_grad(
    fixture: Fixture, *, double: bool, use_double_precision: bool | None = None
) -> Result:
    """Label-map value and gradient w.r.t. the logits from torch; float64 statistics when
    ``double`` unless ``use_double_precision`` says otherwise."""
    if use_double_precision is None:
        use_double_precision = double
    return _torch_labels(fixture.name, double, use_double_precision, _torch_settings())


@functools.cache
def _torch_labels(name: str, double: bool, use_double_precision: bool, settings: tuple) -> Result:
    import torch

    from rmi_torch import rmi_loss_from_labels

    fixture = _fixture(name)
    labels = torch_tensor(fixture.target)

    def loss(logits):
        return rmi_loss_from_labels(
            logits, labels, **fixture.options, use_double_precision=use_double_precision
        )

    dtype = torch.float64 if double else torch.float32
    return _torch_run(loss, torch_tensor(fixture.pred, dtype, requires_grad=True))


# The layouts and views of NCHW values that users hand to a loss: the values are those of the
# contiguous tensor, only the memory order or the strides differ.
TORCH_LAYOUTS = (
    "contiguous",
    "channels_last",
    "transposed",
    "nhwc-permuted",
    "strided-view",
    "channel-slice",
)


def torch_layout(x, layout: str):
    """The values of the NCHW tensor ``x`` in ``layout``, one of ``TORCH_LAYOUTS``."""
    import torch

    if layout == "contiguous":
        return x.contiguous()
    if layout == "channels_last":
        formats = {4: torch.channels_last, 5: torch.channels_last_3d}
        return x.contiguous(memory_format=formats[x.dim()])
    if layout == "transposed":
        return x.transpose(-2, -1).contiguous().transpose(-2, -1)
    if layout == "nhwc-permuted":
        last = (0, *range(2, x.dim()), 1)
        back = (0, x.dim() - 1, *range(1, x.dim() - 1))
        return x.permute(last).contiguous().permute(back)
    if layout == "strided-view":
        return torch.stack([x, -x], dim=-1)[..., 0]
    if layout == "channel-slice":
        return torch.cat([x, x], dim=1)[:, x.shape[1] :]
    raise ValueError(f"layout must be one of {TORCH_LAYOUTS}, got {layout!r}")
