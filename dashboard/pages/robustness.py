"""The Robustness page's own widgets and defaults: the attack controls and their run, the verdict,
the original / adversarial / perturbation pictures, the numbers and predictions, the adversarial
download, and each method's explanation of both images."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from dashboard import report, service, state
from dashboard.attacks import amplified_perturbation, attack_summary
from dashboard.computation import Failure, build_request
from dashboard.pictures import pictures
from dashboard.service import LoadedImage, MethodSummary, ModelSummary, ServiceError
from dashboard.state import Page
from dashboard.visuals import DisplaySettings
from dashboard.widgets.results import input_image, map_warnings, show_image, unavailable_card
from dashboard.widgets.running import compute, show_failure
from dashboard.widgets.sidebar import outline_flags

#: Explanations shown by default: one CAM map and one gradient map (both cheap).
DEFAULT_METHODS = ("grad_cam", "vanilla_gradients")


ATTACK_LABELS = {"fgsm": "FGSM", "pgd": "PGD"}
ATTACK_HELP = (
    "FGSM (Goodfellow et al. 2015): one step of size ε along the sign of the loss gradient. "
    "PGD (Madry et al. 2018): a random start in the ε-ball, then many small signed steps, each "
    "projected back into the ball; stronger, a little slower."
)
UNTARGETED = -1
#: Largest ε the slider offers, in pixel levels (32/255 is already a visible change).
MAX_EPSILON = 32
#: Which class each image's explanation answers for, on the Robustness page.
EXPLAIN_TARGETS = {
    "own": "Each image's top class",
    "original": "The original class on both",
    "adversarial": "The new class on both",
}


@dataclass(frozen=True)
class AttackSettings:
    """What the Robustness page's controls ask for. ``epsilon`` and ``step_size`` are in pixel
    levels (0–255); ``step_size`` None is the automatic ``min(ε, 2.5ε/steps)``; ``target`` None
    is untargeted. FGSM ignores steps, step size and seed, so they are normalised for it (one
    cache entry per FGSM attack, whatever the PGD controls say)."""

    method: str
    epsilon: int
    steps: int
    step_size: float | None
    target: int | None
    seed: int

    @property
    def options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`service.attack` (after ``method``)."""
        return {
            "epsilon": float(self.epsilon),
            "steps": int(self.steps),
            "step_size": None if self.step_size is None else float(self.step_size),
            "target": self.target,
            "seed": int(self.seed),
        }


def attack_controls(page: Page, model: ModelSummary) -> AttackSettings:
    """One bordered row of attack controls; the PGD-only ones are disabled for FGSM."""
    k = lambda name: state.key(page, name)  # noqa: E731
    state.default(k("attack"), "fgsm")
    state.default(k("epsilon"), 4)
    state.default_option(k("goal"), [UNTARGETED, *range(model.n_classes)], UNTARGETED)
    state.default(k("steps"), 10)
    state.default(k("step_size"), 0.0)
    state.default(k("seed"), 0)
    with st.container(border=True, key=k("controls")):
        c_method, c_eps, c_goal = st.columns([0.8, 2, 1.6])
        method = c_method.segmented_control(
            "Attack",
            list(ATTACK_LABELS),
            key=k("attack"),
            format_func=ATTACK_LABELS.get,
            required=True,
            persist_state="session",
            help=ATTACK_HELP,
        )
        epsilon = c_eps.slider(
            "ε: largest change of a pixel (levels of 255)",
            1,
            MAX_EPSILON,
            step=1,
            key=k("epsilon"),
            persist_state="session",
            help="The L∞ budget: no colour channel of any pixel moves by more than ε levels out "
            "of 255 (ε = 8 is the literature's 8/255). A few levels are hard to see at all.",
        )
        goal = c_goal.selectbox(
            "Goal",
            [UNTARGETED, *range(model.n_classes)],
            key=k("goal"),
            format_func=lambda i: (
                "Any other class (untargeted)"
                if i == UNTARGETED
                else f"Make it say “{model.class_names[i]}”"
            ),
            persist_state="session",
            help="Untargeted: push the current class down. Targeted: pull one class up.",
        )
        pgd = method == "pgd"
        why_off = "FGSM takes a single step; this applies to PGD only."
        c_steps, c_size, c_seed = st.columns([2, 1, 1])
        steps = c_steps.slider(
            "PGD steps",
            1,
            100,
            step=1,
            key=k("steps"),
            disabled=not pgd,
            persist_state="session",
            help="Gradient steps of PGD." if pgd else why_off,
        )
        step_size = c_size.number_input(
            "PGD step size (0 = auto)",
            min_value=0.0,
            max_value=float(MAX_EPSILON),
            step=0.25,
            key=k("step_size"),
            disabled=not pgd,
            persist_state="session",
            help="PGD step in pixel levels. 0 picks min(ε, 2.5·ε/steps), the Madry lab's rule "
            "of thumb."
            if pgd
            else why_off,
        )
        seed = c_seed.number_input(
            "PGD seed",
            min_value=0,
            max_value=2**31 - 1,
            step=1,
            key=k("seed"),
            disabled=not pgd,
            persist_state="session",
            help="Seed of PGD's random start in the ε-ball." if pgd else why_off,
        )
    if not pgd:
        return AttackSettings("fgsm", int(epsilon), 1, None, _goal(goal), 0)
    return AttackSettings(
        "pgd", int(epsilon), int(steps), float(step_size) or None, _goal(goal), int(seed)
    )


def _goal(choice: int) -> int | None:
    return None if choice == UNTARGETED else int(choice)


def run_attack(
    model: ModelSummary,
    image: LoadedImage,
    settings: AttackSettings,
    slot: DeltaGenerator,
    subject: str | None = None,
) -> tuple[service.AttackOutcome, LoadedImage] | Failure:
    """The attack's outcome and the adversarial image (cached), with a progress bar in ``slot``
    while it runs, or a :class:`Failure`."""
    label = f"{ATTACK_LABELS[settings.method]} attack"
    progress, clear = service.streamlit_progress(slot, label)
    try:
        return service.attack(
            model, image, settings.method, **settings.options, subject=subject, progress=progress
        )
    except ServiceError as err:
        return Failure.from_error(err)
    finally:
        clear()


def attack_verdict(outcome: service.AttackOutcome, model: ModelSummary) -> None:
    """One line the class can read from the back: did the decision change, and to what."""
    success, line = attack_summary(outcome, model.class_names)
    if success:
        st.success(line, icon=":material/swap_horiz:")
    else:
        st.warning(line, icon=":material/block:")
    if outcome.success_at_model_resolution and not outcome.success:
        st.caption(
            "At the model's input resolution the attack did succeed; resizing and rounding the "
            "change to whole pixel levels undid it."
        )


def attack_pictures(
    image: LoadedImage, adversarial: LoadedImage, outcome: service.AttackOutcome
) -> None:
    """Original, adversarial and the amplified perturbation side by side (with the sidebar's
    ground-truth outlines on the two images)."""
    outline_mask, outline_marker = outline_flags()
    settings = DisplaySettings(outline_mask=outline_mask, outline_marker=outline_marker)
    picture, factor = amplified_perturbation(outcome.perturbation)
    before, after = outcome.before[0], outcome.after[0]
    left, middle, right = st.columns(3)
    with left:
        st.markdown("**Original**")
        input_image(image, settings, caption=f"{before.name} · {before.probability:.1%}")
    with middle:
        st.markdown("**Adversarial**")
        input_image(adversarial, settings, caption=f"{after.name} · {after.probability:.1%}")
    with right:
        st.markdown(f"**The change, amplified ×{factor}**")
        caption = (
            "grey = unchanged; brighter / darker = pixel raised / lowered"
            if outcome.linf > 0
            else "no pixel changed"
        )
        show_image(picture, caption)


def attack_numbers(outcome: service.AttackOutcome) -> None:
    """L∞ and L2 of the change, its share of changed pixels, and what the attack ran."""
    cols = st.columns(4)
    cols[0].metric(
        "L∞ (levels)", f"{outcome.linf:g}", help="The largest change of any colour channel."
    )
    height, width = outcome.perturbation.shape[:2]
    cols[1].metric(
        "L2 (levels)",
        f"{outcome.l2:.1f}",
        help=f"The Euclidean length of the change over all {height}×{width}×3 values.",
    )
    changed = float(np.mean(np.any(outcome.perturbation != 0, axis=-1)))
    cols[2].metric("Pixels changed", f"{changed:.0%}")
    steps = "1 step" if outcome.steps == 1 else f"{outcome.steps} steps of {outcome.step_size:g}"
    cols[3].metric(
        "Attack",
        f"{outcome.method.upper()} ε={outcome.epsilon:g}",
        help=f"{steps}; seed {outcome.seed}" if outcome.method == "pgd" else steps,
    )


def attack_predictions_table(outcome: service.AttackOutcome) -> None:
    """Top classes before and after the attack, side by side."""
    before = {p.index: p for p in outcome.before}
    after = {p.index: p for p in outcome.after}
    order = list(dict.fromkeys([*before, *after]))
    rows = [
        {
            "Class": (before.get(i) or after[i]).name,
            "Before": before[i].probability if i in before else None,
            "After": after[i].probability if i in after else None,
        }
        for i in order
    ]
    st.dataframe(
        rows,
        hide_index=True,
        width="stretch",
        column_config={
            "Before": st.column_config.NumberColumn("Before", format="percent"),
            "After": st.column_config.NumberColumn("After", format="percent"),
        },
    )
    if len(outcome.losses) > 1:
        steps = (
            f"{outcome.steps} steps of {outcome.step_size:g} level(s)"
            if outcome.method == "pgd"
            else f"one step of {outcome.step_size:g} levels"
        )
        st.caption(
            f"{outcome.method.upper()}: {steps}. Loss of the attacked class "
            f"{outcome.losses[0]:.3f} → {outcome.losses[-1]:.3f} "
            f"({'pushed up' if outcome.target is None else 'pulled down'})."
        )


def adversarial_download(page: Page, image: LoadedImage, outcome: service.AttackOutcome) -> None:
    stem = report.file_stem(image.name, outcome.method, f"eps{outcome.epsilon:g}")
    st.download_button(
        "Adversarial PNG",
        lambda: report.png_bytes(outcome.adversarial),
        file_name=f"{stem}.png",
        mime="image/png",
        key=state.key(page, "download_adversarial"),
        on_click="ignore",
        icon=":material/download:",
        help="The adversarial image at the original's resolution (lossless: a JPEG would "
        "destroy the perturbation).",
    )


def explanation_target_picker(page: Page) -> str:
    key = state.key(page, "explain_target")
    state.default_option(key, list(EXPLAIN_TARGETS), "own")
    return st.radio(
        "Class explained",
        list(EXPLAIN_TARGETS),
        key=key,
        format_func=EXPLAIN_TARGETS.get,
        horizontal=True,
        persist_state="session",
        help="Each image's top class shows why the model says what it says; the same class on "
        "both shows how the evidence for it moved.",
    )


def explanation_pair(
    page: Page,
    model: ModelSummary,
    method: MethodSummary,
    images: tuple[LoadedImage, LoadedImage],
    targets: tuple[int | str, int | str],
    settings: DisplaySettings,
) -> None:
    """``method``'s map of the original and of the adversarial image, side by side, in a card."""
    with st.container(border=True, key=state.key(page, f"pair_{method.name}")):
        st.markdown(f"##### {method.label}")
        if not method.applicable:
            unavailable_card(f"Not available for this model: {method.reason}")
            return
        cells = st.columns(2)
        for cell, picture, target, title in zip(
            cells, images, targets, ("Original", "Adversarial"), strict=True
        ):
            with cell:
                layer = model.default_layer if method.uses_layer else None
                request = build_request(
                    model, picture, method, {}, target=target, layer=layer, engine="native"
                )
                if isinstance(request, str):
                    st.warning(request)
                    continue
                outcome = compute(request, picture, st.empty(), method)
                if isinstance(outcome, Failure):
                    show_failure(outcome, f"{page}_{method.name}_{title.lower()}")
                    continue
                show_image(
                    pictures(outcome, picture, settings).overlay,
                    f"{title} · {report.target_summary(outcome)}",
                )
                map_warnings(outcome)
