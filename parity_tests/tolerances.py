"""Every tolerance the parity tests enforce, with the reason for its value.

Relative errors of arrays are taken in norm: ``||a - b|| / ||b||``.
"""

# float64 backends vs the float64 NumPy reference: both are exact algorithms in float64 on small,
# well-conditioned fixtures, so they may differ only by rounding (measured: ~1e-13).
F64_VALUE_RTOL = 1e-10
# The same bound as an absolute floor, for drawn inputs whose loss may cross zero (the RMI term
# is negative, the BCE term positive): rounding of O(1) terms, not of their small sum.
F64_VALUE_ATOL = 1e-10

# Two float64 computations of the same loss that differ only in layout, strides or chunking: the
# same arithmetic, at most in another order, so rounding only.
F64_SAME_MATH_RTOL = 1e-12

# JAX vs PyTorch gradients in float64: the same closed-form backward in both, so rounding only.
CROSS_BACKEND_GRAD_RTOL = 1e-9

# float64 gradients vs central finite differences of the reference: the differences themselves
# carry truncation and rounding error of about 1e-8, so 1e-6 leaves margin without hiding bugs.
FD_GRAD_RTOL = 1e-6

# float32 routes vs the reference. The loss is O(1) per class and can cross zero (the RMI term is
# negative, the BCE term positive), so the relative bound gets an absolute floor of the same size.
F32_VALUE_RTOL = 1e-5
F32_VALUE_ATOL = 1e-5

# float32 gradients vs float64 ones (or finite differences), on ordinary inputs. Measured: at most
# 2e-6 (JAX) and 2e-6 (PyTorch), 3e-5 on the smallest-map fixture.
F32_GRAD_RTOL = 1e-4

# Where the prediction is an exact function of the target (near-perfect, exact, constant), the
# joint Gram matrix J is singular but for eps and the gradient's sensitivity to float32 rounding of
# the region data grows like cond(J): any float32 algorithm, QR included, is off by ~u * cond(J)
# (u = 6e-8), and even the exact gradient of the float32-rounded data moves that much. Measured on
# the degenerate fixtures: error / (u * cond(J)) at most 3.2 (cond(J) up to 3e5). The bound for
# those fixtures is this many units of u * cond(J), never tighter than F32_GRAD_RTOL.
F32_DEGENERATE_GRAD_ROUNDING_UNITS = 16
FLOAT32_UNIT_ROUNDOFF = 2.0**-24


def f32_grad_rtol(fixture) -> float:
    """The float32 gradient tolerance for ``fixture`` (see the two constants above)."""
    if not fixture.degenerate:
        return F32_GRAD_RTOL
    scaled = F32_DEGENERATE_GRAD_ROUNDING_UNITS * FLOAT32_UNIT_ROUNDOFF * fixture.joint_condition
    return max(F32_GRAD_RTOL, scaled)


# Two computations of the same float32 loss that differ only in layout or batching (NHWC vs NCHW,
# jit vs eager, vmap vs loop): reassociated float32 sums, nothing more.
F32_SAME_MATH_RTOL = 1e-5
F32_SAME_MATH_ATOL = 1e-6
# The same float32 loss by the same sums, where only a few roundings can differ (an all-true mask
# vs none, masked-out values spoiled, a traced mask vs a concrete one): a few units of float32
# rounding (u = 6e-8) of the value, well inside the same-math bound.
F32_FEW_ROUNDINGS_RTOL = 1e-6


def f32_same_math_grad_rtol(fixture) -> float:
    """Two float32 gradients of ``fixture`` that differ in rounding only (jit vs eager, ...).

    The gradient's sensitivity to rounding of the region data is about u cond(J) (see above), so
    the order of operations alone moves it that much: two computations differ by at most twice
    that (measured: at most 0.1 u cond(J) between jit and eager, on the fixtures with cond(J)
    from 8e3 to 3e5); never tighter than F32_SAME_MATH_RTOL.
    """
    return max(F32_SAME_MATH_RTOL, 2 * FLOAT32_UNIT_ROUNDOFF * fixture.joint_condition)


def relative_error(actual, expected) -> float:
    """``||actual - expected|| / ||expected||`` in float64 (0 when both are zero)."""
    import numpy as np

    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    scale = np.linalg.norm(expected)
    error = np.linalg.norm(actual - expected)
    return float(error / scale) if scale > 0 else float(error)
