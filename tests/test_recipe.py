"""The softmax cross-entropy + RMI recipe of the README trains: a few steps on the synthetic data,
with integer labels and ignored pixels, lower the loss and keep it finite, in both backends."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import torch.nn.functional as F

import rmi_jax
import rmi_torch
from examples.synthetic import make_dataset

NUM_CLASSES, IGNORE_INDEX = 4, 255
STEPS = 8
IMAGES, LABELS = make_dataset(8, size=32, num_classes=NUM_CLASSES, seed=3)
LABELS = np.where(np.random.default_rng(3).random(LABELS.shape) < 0.05, IGNORE_INDEX, LABELS)


def jax_recipe(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """The README's JAX recipe: NHWC logits, ``[N, H, W]`` labels with ignored pixels."""
    valid = labels != IGNORE_INDEX
    safe_labels = jnp.where(valid, labels, 0)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, safe_labels)
    ce = (ce * valid).sum() / jnp.maximum(valid.sum(), 1)
    keep = valid[..., None]  # ignored pixels: zero points for RMI
    probabilities = jax.nn.softmax(logits) * keep
    targets = jax.nn.one_hot(safe_labels, NUM_CLASSES) * keep
    rmi = rmi_jax.rmi_loss(probabilities, targets, with_logits=False, bce_weight=0.0)
    return 0.5 * ce + 0.5 * rmi


def torch_recipe(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The README's PyTorch recipe: NCHW logits."""
    valid = (labels != IGNORE_INDEX).unsqueeze(1)  # ignored pixels: zero points for RMI
    targets = F.one_hot(labels.masked_fill(~valid[:, 0], 0), NUM_CLASSES).permute(0, 3, 1, 2)
    ce = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)
    rmi = rmi_torch.rmi_loss(
        torch.softmax(logits, 1) * valid, targets * valid, with_logits=False, bce_weight=0.0
    )
    return 0.5 * ce + 0.5 * rmi


def test_jax_recipe_trains() -> None:
    # A 3x3 convolution from RGB to class logits: enough to move the loss in a few steps.
    kernel = 0.1 * jax.random.normal(jax.random.key(0), (3, 3, 3, NUM_CLASSES))
    images, labels = jnp.asarray(IMAGES), jnp.asarray(LABELS)

    def loss_fn(kernel):
        logits = jax.lax.conv_general_dilated(
            images, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return jax_recipe(logits, labels)

    optimizer = optax.adam(3e-2)
    state = optimizer.init(kernel)

    @jax.jit
    def step(kernel, state):
        loss, grad = jax.value_and_grad(loss_fn)(kernel)
        updates, state = optimizer.update(grad, state)
        return optax.apply_updates(kernel, updates), state, loss

    losses = []
    for _ in range(STEPS):
        kernel, state, loss = step(kernel, state)
        losses.append(float(loss))
    assert np.isfinite(losses).all()
    assert losses[-1] < losses[0]


def test_torch_recipe_trains() -> None:
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, NUM_CLASSES, 3, padding=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
    images = torch.tensor(IMAGES).permute(0, 3, 1, 2)
    labels = torch.tensor(LABELS, dtype=torch.long)
    losses = []
    for _ in range(STEPS):
        loss = torch_recipe(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert np.isfinite(losses).all()
    assert losses[-1] < losses[0]


def test_study_recipe_is_defined_finite_and_follows_its_schedule() -> None:
    from examples.study import LOSSES, RECIPE_BASELINE, Combined

    recipe = LOSSES["recipe"]
    assert RECIPE_BASELINE in LOSSES and RECIPE_BASELINE != "recipe"
    assert isinstance(recipe, Combined)
    logits = 3.0 * jax.random.normal(jax.random.key(1), (2, 16, 16, NUM_CLASSES))
    targets = jax.nn.one_hot(jnp.asarray(LABELS[:2, :16, :16] % NUM_CLASSES), NUM_CLASSES)
    for progress in (0.0, 0.4, 1.0):
        loss, grad = jax.jit(jax.value_and_grad(recipe))(logits, targets, jnp.float32(progress))
        assert np.isfinite(float(loss)) and np.isfinite(np.asarray(grad)).all()
        base, rmi = recipe.terms(logits, targets, progress)
        np.testing.assert_allclose(float(loss), float(base + rmi), rtol=TERMS_RTOL)
    # The RMI share is a schedule of the run's progress: off at the start, on by the end, never
    # down, and the baseline's loss is the recipe's at share 0.
    shares = [float(recipe.share_at(p)) for p in np.linspace(0.0, 1.0, 21)]
    assert shares[0] == 0.0 and shares[-1] > 0.0 and np.all(np.diff(shares) >= 0.0)
    np.testing.assert_allclose(
        float(recipe.terms(logits, targets, 0.0)[0]),
        float(LOSSES[RECIPE_BASELINE](logits, targets)),
        rtol=TERMS_RTOL,
    )


# The objective and the sum of its two terms are the same float32 sums, in another order.
TERMS_RTOL = 1e-6
