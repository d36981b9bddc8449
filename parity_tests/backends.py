"""Run either backend on a fixture: NumPy in, NumPy out, NCHW, gradients w.r.t. the prediction."""

from __future__ import annotations

import numpy as np

from parity_tests.fixtures import Fixture


def jax_value_and_grad(
    fixture: Fixture, *, double: bool, reduction: str = "mean"
) -> tuple[np.ndarray, np.ndarray]:
    """Value (``reduction``) and gradient of the summed value w.r.t. the prediction, from JAX."""
    import jax
    import jax.numpy as jnp

    from rmi_jax import rmi_loss

    dtype = jnp.float64 if double else jnp.float32

    def loss(pred):
        value = rmi_loss(
            pred,
            jnp.asarray(fixture.target, dtype),
            **fixture.options,
            **fixture.mask_argument(jnp.asarray),
            use_double_precision=double,
            channel_axis=1,
            reduction=reduction,
        )
        return value.sum(), value

    grad, value = jax.grad(loss, has_aux=True)(jnp.asarray(fixture.pred, dtype))
    return np.asarray(value), np.asarray(grad)


def torch_value_and_grad(
    fixture: Fixture, *, double: bool, reduction: str = "mean"
) -> tuple[np.ndarray, np.ndarray]:
    """Value (``reduction``) and gradient of the summed value w.r.t. the prediction, from torch."""
    import torch

    from rmi_torch import rmi_loss

    dtype = torch.float64 if double else torch.float32
    pred = torch.tensor(fixture.pred, dtype=dtype, requires_grad=True)
    value = rmi_loss(
        pred,
        torch.tensor(fixture.target, dtype=dtype),
        **fixture.options,
        **fixture.mask_argument(torch.tensor),
        use_double_precision=double,
        reduction=reduction,
    )
    value.sum().backward()
    return value.detach().numpy(), pred.grad.numpy()
