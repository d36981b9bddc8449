"""The loss from its two terms, for any array library: which terms to compute, their weighted
sum with non-finite inputs flagged, and the reduction over the batch."""

from __future__ import annotations

from typing import Any, NamedTuple

from rmi_core.options import is_array


class LossTerms(NamedTuple):
    """The loss and its two terms, each reduced like the loss (``return_terms=True``).

    ``total`` is what the loss returns otherwise; ``bce`` and ``rmi`` are the unweighted BCE and
    RMI terms, so ``total = w_bce * bce + w_rmi * rmi`` with the call's weights.
    """

    total: Any
    bce: Any
    rmi: Any


def terms_to_compute(bce_weight: object, rmi_weight: object, return_terms: bool):
    """Whether to compute the BCE and the RMI term: a term is skipped only when its weight is a
    Python zero and the terms were not asked for."""

    def skipped(weight: object) -> bool:
        return not is_array(weight) and weight == 0

    return return_terms or not skipped(bce_weight), return_terms or not skipped(rmi_weight)


def combine_terms(bce_weight, bce, rmi_weight, rmi, flags, *, reduction, return_terms):
    """The loss from its terms (``None`` where not computed), for any array library.

    ``bce_weight * bce + rmi_weight * rmi``, made NaN wherever ``flags`` is not finite
    (``0 * inf`` and ``0 * NaN`` are NaN: the flags mark non-finite inputs), then reduced; with
    ``return_terms`` a ``LossTerms`` of the total and the two terms, each reduced alike.
    """
    parts = [w * term for w, term in ((bce_weight, bce), (rmi_weight, rmi)) if term is not None]
    total = sum(parts[1:], parts[0]) + 0 * flags
    if return_terms:
        return LossTerms(*(reduce_loss(term, reduction) for term in (total, bce, rmi)))
    return reduce_loss(total, reduction)


def reduce_loss(per_example, reduction: str):
    """``"mean"`` or ``"sum"`` over the batch axis, or ``"none"``: any array library's arrays."""
    if reduction == "mean":
        return per_example.mean()
    if reduction == "sum":
        return per_example.sum()
    if reduction == "none":
        return per_example
    raise ValueError(f"Unsupported reduction: {reduction}")
