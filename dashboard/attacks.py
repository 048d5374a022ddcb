"""The Robustness page's adversarial examples described without Streamlit: the verdict sentence,
the perturbation as a visible picture, and which class each image's explanation answers for."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from dashboard import service


def attack_summary(outcome: service.AttackOutcome, class_names: Sequence[str]) -> tuple[bool, str]:
    """(whether the attack did what was asked, the one-line verdict in Markdown)."""
    before, after = outcome.before[0], outcome.after[0]
    change = (
        f"**{before.name}** ({before.probability:.1%}) → **{after.name}** ({after.probability:.1%})"
    )
    if outcome.target is not None:
        if outcome.reached_target:
            return True, f"Target reached: {change}"
        goal = class_names[outcome.target]
        return False, f"Target “{goal}” not reached: {change} — try a larger ε or more PGD steps."
    if outcome.flipped:
        return True, f"Decision flipped: {change}"
    return False, f"Not flipped: {change} — try a larger ε (or PGD, which is stronger)."


def amplified_perturbation(perturbation: np.ndarray) -> tuple[np.ndarray, int]:
    """The perturbation (float (H, W, 3), pixel levels) as a visible uint8 picture: mid-grey is
    "unchanged", and each level is multiplied by the returned factor so that the largest change
    reaches almost full contrast."""
    largest = float(np.max(np.abs(perturbation))) if perturbation.size else 0.0
    factor = max(1, math.floor(127 / largest)) if largest > 0 else 1
    picture = np.clip(np.rint(128.0 + factor * perturbation), 0, 255).astype(np.uint8)
    return picture, factor


def explained_targets(
    outcome: service.AttackOutcome, choice: str, region: str | None = None
) -> tuple[int | str, int | str]:
    """(target explained on the original, target explained on the adversarial image): a class
    index, or for a segmentation the attacked ``region`` (its text form) read for that class.
    A region given as the class's predicted pixels is re-read on each image's own prediction
    (the adversarial image may predict the class elsewhere, or nowhere: the page then says so)."""
    original, adversarial = outcome.before[0].index, outcome.after[0].index
    if choice == "original":
        pair = (original, original)
    elif choice == "adversarial":
        pair = (adversarial, adversarial)
    else:
        pair = (original, adversarial)
    if region is None:
        return pair
    kind, _, rest = [*region.split(":", 2), "", ""][:3]
    if "at=" in rest:
        # A clicked shape: the class is whatever each image predicts at that pixel.
        return (region.replace(f"{kind}:{_}:", f"{kind}:*:", 1),) * 2  # type: ignore[return-value]
    return tuple(  # type: ignore[return-value]
        ":".join(part for part in (kind, str(c), rest) if part) for c in pair
    )
