"""Speed of every method against its own lower bound and against the peer libraries, in one run.

    python -m pip install -r benchmarks/requirements.txt
    python benchmarks/bench.py --results benchmarks/RESULTS.md  # all; rewrites RESULTS.md
    python benchmarks/bench.py --quick --models demo --methods grad_cam,occlusion   # dev loop

For each model and method, measured in one process and *interleaved* (one call of each candidate
per round, in a new random order each round, so machine load hits all of them alike):

* ours, same image: ``explainers.explain`` on the image it explained before. The clean prediction
  is memoised, so this is what a second method on the dashboard's current image costs;
* ours, new image: a different image every call (one pixel changed), so nothing is memoised;
* the lower bound: the compiled passes the method fundamentally needs, written as plain
  ``tf.function``s over the user's model with no explanation code, each at its best batching;
  for "new image" plus the one forward that gives the clean prediction, where the method's own
  passes do not already include the clean input (see ``bound_plan``);
* the peers at matched parameters: tf-explain's ``explain`` and raw functions, tf-keras-vis.

Cold = the first call in the process (tracing), after the bundle predicted once (the dashboard
shows predictions before any method runs). Peak MB = growth of the process's resident memory
during our first two calls. Ratios and speed-ups are what to read: they come from one run, so the
machine's load cancels out to first order; absolute milliseconds are only comparable within a run.

Studies (full mode): the batch size that best uses this machine, time against image size on a
fully convolutional MobileNetV2, time against sample count, and Integrated Gradients' completeness
error against the number of passes for each quadrature rule.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

import explainers  # noqa: E402
from explainers.core.runner import AUTO_BATCH_PIXELS, auto_batch_size  # noqa: E402
from explainers.methods.gradients import QUADRATURE_RULES  # noqa: E402
from explainers.methods.occlusion import patch_positions  # noqa: E402

warnings.filterwarnings("ignore")
MB = 1024 * 1024

# Matched parameters: the same for us and for every peer that has the method.
PARAMS: dict[str, dict[str, Any]] = {
    "smoothgrad": {"n_samples": 20, "noise_level": 0.15},
    "integrated_gradients": {"steps": 20},
    "occlusion": {"patch_size": 16, "stride": 16},
    "score_cam": {"max_channels": 64},
    "rise": {"n_masks": 256},
    "lime": {"n_samples": 256},
    "kernel_shap": {"max_evals": 256},
}
#: Batch sizes tried for the lower bound's "best batching" and in the batch-size study.
BATCHES = (1, 2, 4, 8, 16, 32, 64)
QUICK_BATCHES = (1, 8, 32)
#: The stricter ratio target for the perturbation methods (batched, no Python per item).
PERTURBATION = ("occlusion", "score_cam", "rise")
#: Methods a peer implements at 2.6× its bound or worse, where we aim at a 2× speed-up.
FAMILY_TARGET = {"grad_cam", "grad_cam_plus_plus", "layer_cam", "score_cam"}


# ------------------------------------------------------------------------------------------------
# Measuring
# ------------------------------------------------------------------------------------------------
class PeakRSS:
    """Peak growth of this process's resident memory while the block runs (sampled every 2 ms)."""

    def __enter__(self) -> PeakRSS:
        self._process = psutil.Process()
        self.start = self._process.memory_info().rss
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(0.002)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.start) / MB


def timed_ms(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000


#: A round (one call of every candidate) faster than this gets up to FAST_ROUNDS_FACTOR × the
#: rounds asked for, within the budget.
FAST_ROUND_S = 1.0
FAST_ROUNDS_FACTOR = 5


def interleaved(
    candidates: dict[str, Callable[[], Any]], repeats: int, budget_s: float | None = None
) -> dict[str, dict[str, Any]]:
    """Cold call of each candidate (in order), then rounds of one warm call each.

    Runs ``repeats`` rounds, or fewer (never under 3) when a round takes so long that they would
    exceed ``budget_s``; with a budget, a round under :data:`FAST_ROUND_S` gets up to
    :data:`FAST_ROUNDS_FACTOR` times more rounds (millisecond methods need many samples for a
    stable median on a shared machine). The order is shuffled every round (seeded). Returns
    {name: {"cold_ms", "ms" (median warm), "warm_ms" (all)}}, or {"error"} for a candidate that
    raised.
    """
    results: dict[str, dict[str, Any]] = {}
    live: dict[str, Callable[[], Any]] = {}
    for name, fn in candidates.items():
        try:
            results[name] = {"cold_ms": timed_ms(fn), "warm_ms": []}
            live[name] = fn
        except Exception as exc:  # a peer failing is a finding, not a crash
            results[name] = {"error": f"{type(exc).__name__}: {str(exc)[:160]}"}
    names = list(live)
    rounds = repeats
    most = repeats * (FAST_ROUNDS_FACTOR if budget_s is not None else 1)
    order = random.Random(0)
    for round_index in range(most):
        if round_index >= rounds:
            break
        # A fresh random order each round: a candidate that always ran right after a heavy peer
        # (cold caches) or right after its twin (warm caches) would be biased.
        shuffled = order.sample(names, len(names))
        started = time.perf_counter()
        for name in shuffled:
            results[name]["warm_ms"].append(timed_ms(live[name]))
        if round_index == 0 and budget_s is not None:
            per_round = time.perf_counter() - started
            cap = most if per_round < FAST_ROUND_S else repeats
            rounds = max(3, min(cap, int(budget_s / max(per_round, 1e-9))))
    for name in names:
        results[name]["ms"] = statistics.median(results[name]["warm_ms"])
        results[name]["rounds"] = len(results[name]["warm_ms"])
    return results


def quiet(call: Callable[[], Any]) -> Callable[[], Any]:
    """``call`` with its stdout discarded (Keras progress bars inside some peers)."""

    def run() -> Any:
        with contextlib.redirect_stdout(io.StringIO()):
            return call()

    return run


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


# ------------------------------------------------------------------------------------------------
# Lower bounds: plain compiled passes through the user's model, no explanation code at all.
# ------------------------------------------------------------------------------------------------
class Passes:
    """Compiled forward (``f``), forward + backward to the input (``fb``) and to a layer
    (``fbl``) of one model on one input, at any batch size (the batch axis is traced free)."""

    def __init__(self, model: keras.Model, x: np.ndarray, target: int, layer: str | None) -> None:
        self.x, self.target = x, target
        spec = tf.TensorSpec([None, *x.shape[1:]], tf.float32)

        @tf.function
        def forward(batch: tf.Tensor) -> tf.Tensor:
            return model(batch, training=False)

        @tf.function
        def forward_backward(batch: tf.Tensor) -> tf.Tensor:
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(batch)
                score = model(batch, training=False)[:, target]
            return tape.gradient(score, batch)

        self.fns: dict[str, Any] = {"f": forward, "fb": forward_backward}
        # To the layer: a two-output view of a flat functional model (CAM methods stop there).
        self.layer_bound = "to the layer"
        if layer is not None and "/" not in layer:
            view = keras.Model(model.inputs, [model.get_layer(layer).output, model.outputs[0]])

            @tf.function
            def forward_backward_layer(batch: tf.Tensor) -> tf.Tensor:
                with tf.GradientTape(watch_accessed_variables=False) as tape:
                    tape.watch(batch)
                    activation, output = view(batch, training=False)
                    score = output[:, target]
                return tape.gradient(score, activation)

            self.fns["fbl"] = forward_backward_layer
        else:  # nested layer: fall back to the (larger) bound through to the input
            self.fns["fbl"] = forward_backward
            self.layer_bound = "to the input (nested layer)"
        for fn in self.fns.values():
            fn.get_concrete_function(spec)
        self._data: dict[int, tf.Tensor] = {}
        self.per_batch_ms: dict[str, dict[int, float]] = {"f": {}, "fb": {}, "fbl": {}}

    def data(self, batch: int) -> tf.Tensor:
        if batch not in self._data:
            self._data[batch] = tf.constant(np.repeat(self.x, batch, axis=0))
        return self._data[batch]

    def call(self, kind: str, batch: int) -> Callable[[], Any]:
        fn, data = self.fns[kind], self.data(batch)
        return lambda: fn(data).numpy()

    def profile(self, kinds: tuple[str, ...], batches: tuple[int, ...], repeats: int) -> None:
        """Per-call time of each (kind, batch size), interleaved; fills ``per_batch_ms``."""
        candidates = {f"{k}:{b}": self.call(k, b) for k in kinds for b in batches}
        for name, result in interleaved(candidates, repeats).items():
            kind, batch = name.split(":")
            self.per_batch_ms[kind][int(batch)] = result["ms"]

    def splits(self, kind: str, n: int, keep: int = 2) -> list[list[int]]:
        """Ways to run n passes: one batch of n (n ≤ 64), the ``keep`` splits into equal
        batches (plus a remainder) that the profile says are fastest, and the split at the
        library's automatic batch size (so a noisy profile cannot leave out the batching the
        library itself uses: more candidates can only lower the bound)."""
        table = self.per_batch_ms[kind]
        options: list[tuple[float, list[int]]] = []
        for size in sorted(table):
            if size > n:
                continue
            full, rest = divmod(n, size)
            split = [size] * full + ([rest] if rest else [])
            options.append(
                (full * table[size] + (self._estimate(kind, rest) if rest else 0), split)
            )
        chosen = [split for _, split in sorted(options, key=lambda o: o[0])[:keep]]
        if n <= max(BATCHES) and [n] not in chosen:
            chosen.append([n])
        auto = min(n, auto_batch_size(self.x.shape[1:]))
        full, rest = divmod(n, auto)
        auto_split = [auto] * full + ([rest] if rest else [])
        if auto_split not in chosen:
            chosen.append(auto_split)
        return chosen

    def _estimate(self, kind: str, batch: int) -> float:
        table = self.per_batch_ms[kind]
        larger = [b for b in sorted(table) if b >= batch]
        return table[larger[0]] if larger else table[max(table)] * batch / max(table)

    def plan_calls(self, plan: list[tuple[str, int]]) -> dict[str, Callable[[], Any]]:
        """Candidate calls, each running every pass of ``plan`` [(kind, n), ...], named by their
        batching; the bound is the fastest (measured, not estimated). Several candidates only
        for a single-kind plan."""
        if len(plan) == 1:
            kind, n = plan[0]
            return {
                f"bound {describe_split(s)}": self._run([self.call(kind, size) for size in s])
                for s in self.splits(kind, n)
            }
        return {"bound as one batch each": self._run([self.call(kind, n) for kind, n in plan])}

    @staticmethod
    def _run(calls: list[Callable[[], Any]]) -> Callable[[], Any]:
        def run() -> None:
            for call in calls:
                call()

        return run


def describe_split(split: list[int]) -> str:
    """[8, 8, 8, 4] → '3×8 + 4'."""
    full = split.count(split[0])
    text = f"{full}×{split[0]}" if full > 1 else str(split[0])
    return text + "".join(f" + {size}" for size in split[full:])


def n_patches(bundle: explainers.ModelBundle, params: dict[str, Any], shape: tuple) -> int:
    h, w = bundle.model_size_for(shape)
    patch, stride = int(params["patch_size"]), int(params["stride"]) or int(params["patch_size"])
    return len(patch_positions(h, patch, stride)) * len(patch_positions(w, patch, stride))


def bound_plan(
    method: str, params: dict[str, Any], bundle: explainers.ModelBundle, shape: tuple, layer: str
) -> tuple[list[tuple[str, int]], bool, str]:
    """(passes on the same image, whether a new image needs one more forward, description).

    The clean prediction is memoised, so on the same image the bound is only the method's own
    passes. On a new image with the target given, methods whose passes include the clean input
    (gradients, CAM family) get the prediction from them for free; the others (noisy copies, path
    points, occluded or masked copies) need one more forward of the clean input.
    """
    if method in ("vanilla_gradients", "gradient_x_input", "guided_backprop"):
        return [("fb", 1)], False, "1 fb"
    if method in ("grad_cam", "grad_cam_plus_plus", "layer_cam"):
        return [("fbl", 1)], False, "1 fb to the layer"
    if method == "guided_grad_cam":
        return [("fbl", 1), ("fb", 1)], False, "1 fb to the layer + 1 fb"
    if method == "cam":
        return [("f", 1)], False, "1 f"
    if method == "smoothgrad":
        n = int(params["n_samples"])
        if params["base"] == "integrated_gradients":
            n *= int(params["base_steps"])
        return [("fb", n)], True, f"{n} fb"
    if method == "integrated_gradients":
        return [("fb", int(params["steps"]))], True, f"{params['steps']} fb"
    if method == "occlusion":
        n = n_patches(bundle, params, shape)
        return [("f", n)], True, f"{n} f"
    if method == "score_cam":
        channels = bundle.layer(layer).output_shape[-1]
        k = min(channels, int(params["max_channels"]) or channels)
        # The activations forward is part of the method (it gives the masks) on any image.
        return [("f", 1 + k)], False, f"1 + {k} f"
    if method == "rise":
        n = int(params["n_masks"])
        return [("f", n)], True, f"{n} f"
    # Any other method: the passes its registry entry declares (forwards, of which backwards).
    forwards, backwards = explainers.get_method(method).passes(params, bundle)
    plan = [(kind, n) for kind, n in (("fb", backwards), ("f", forwards - backwards)) if n > 0]
    text = " + ".join(f"{n} {kind}" for kind, n in plan) + " (declared)"
    return plan, True, text


# ------------------------------------------------------------------------------------------------
# Peers
# ------------------------------------------------------------------------------------------------
def peer_calls(
    model: keras.Model, x: np.ndarray, target: int, layer: str, sigma: float
) -> dict[str, dict[str, Callable[[], Any]]]:
    """{method: {peer name: zero-argument call}} at matched parameters."""
    from tf_explain.core.grad_cam import GradCAM
    from tf_explain.core.gradients_inputs import GradientsInputs
    from tf_explain.core.integrated_gradients import IntegratedGradients
    from tf_explain.core.occlusion_sensitivity import OcclusionSensitivity
    from tf_explain.core.smoothgrad import SmoothGrad
    from tf_explain.core.vanilla_gradients import VanillaGradients
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
    from tf_keras_vis.layercam import Layercam
    from tf_keras_vis.saliency import Saliency
    from tf_keras_vis.scorecam import Scorecam
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    data = (x, None)
    score = CategoricalScore([target])
    vis = {
        cls: cls(model, model_modifier=ReplaceToLinear(), clone=True)
        for cls in (Gradcam, GradcamPlusPlus, Scorecam, Layercam, Saliency)
    }
    score_model = VanillaGradients().get_score_model(model)
    n, steps = PARAMS["smoothgrad"]["n_samples"], PARAMS["integrated_gradients"]["steps"]
    patch = PARAMS["occlusion"]["patch_size"]

    def occlusion_raw() -> Any:
        return OcclusionSensitivity(batch_size=32).get_sensitivity_map(model, x[0], target, patch)

    def smoothgrad_raw() -> Any:
        noisy = SmoothGrad.generate_noisy_images(x, n, sigma).astype(np.float32)
        return SmoothGrad.get_averaged_gradients(noisy, model, target, n).numpy()

    def ig_raw() -> Any:
        path = IntegratedGradients.generate_interpolations(x, steps).astype(np.float32)
        return IntegratedGradients.get_integrated_gradients(path, model, target, steps).numpy()

    def grad_cam_raw() -> Any:
        outputs, grads = GradCAM.get_gradients_and_filters(model, x, layer, target, False)
        return [m.numpy() for m in GradCAM.generate_ponderated_output(outputs, grads)]

    return {
        "vanilla_gradients": {
            "tf-explain": lambda: VanillaGradients().explain(data, model, target),
            "tf-explain raw": lambda: VanillaGradients.compute_gradients(
                x, score_model, target
            ).numpy(),
            "tf-keras-vis": lambda: vis[Saliency](score, x, smooth_samples=0),
        },
        "gradient_x_input": {
            "tf-explain": lambda: GradientsInputs().explain(data, model, target),
            "tf-explain raw": lambda: GradientsInputs.compute_gradients(
                x, score_model, target
            ).numpy(),
        },
        "smoothgrad": {
            "tf-explain": lambda: SmoothGrad().explain(
                data, model, target, num_samples=n, noise=sigma
            ),
            "tf-explain raw": smoothgrad_raw,
            "tf-keras-vis": lambda: vis[Saliency](
                score, x, smooth_samples=n, smooth_noise=PARAMS["smoothgrad"]["noise_level"]
            ),
        },
        "integrated_gradients": {
            "tf-explain": lambda: IntegratedGradients().explain(data, model, target, n_steps=steps),
            "tf-explain raw": ig_raw,
        },
        "occlusion": {
            "tf-explain": lambda: OcclusionSensitivity(batch_size=32).explain(
                data, model, target, patch
            ),
            "tf-explain raw": occlusion_raw,
        },
        "grad_cam": {
            "tf-explain": lambda: GradCAM().explain(
                data, model, target, layer_name=layer, use_guided_grads=False
            ),
            "tf-explain raw": grad_cam_raw,
            "tf-keras-vis": lambda: vis[Gradcam](score, x, penultimate_layer=layer),
        },
        "grad_cam_plus_plus": {
            "tf-keras-vis": lambda: vis[GradcamPlusPlus](score, x, penultimate_layer=layer),
        },
        "score_cam": {
            "tf-keras-vis": lambda: vis[Scorecam](
                score, x, penultimate_layer=layer, max_N=PARAMS["score_cam"]["max_channels"]
            ),
        },
        "layer_cam": {
            "tf-keras-vis": lambda: vis[Layercam](score, x, penultimate_layer=layer),
        },
    }


# ------------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------------
def photo() -> np.ndarray:
    return explainers.load_image(ROOT / "assets/samples/photos/cat_chelsea.jpg")


def build_model(name: str) -> tuple[explainers.ModelBundle, np.ndarray]:
    if name == "mobilenetv2":
        bundle = explainers.bundle_from_model(keras.applications.MobileNetV2(weights=None))
        return bundle, bundle.resize(photo())
    if name == "resnet50":
        bundle = explainers.bundle_from_model(keras.applications.ResNet50(weights=None))
        return bundle, bundle.resize(photo())
    if name == "demo":
        bundle = explainers.load_model(
            ROOT / "assets/models/demo_shapes.keras",
            labels=ROOT / "assets/models/demo_labels.txt",
        )
        sample = sorted((ROOT / "assets/samples").glob("shapes_star_*[0-9].png"))[0]
        return bundle, explainers.load_image(sample)
    raise SystemExit(f"unknown model {name!r}; choose demo, mobilenetv2, resnet50")


def fully_convolutional_mobilenet() -> explainers.ModelBundle:
    """MobileNetV2 without its top, any input size: GAP → Dense(1000, softmax) on top."""
    base = keras.applications.MobileNetV2(
        include_top=False, weights=None, input_shape=(None, None, 3)
    )
    pooled = keras.layers.GlobalAveragePooling2D(name="gap")(base.output)
    out = keras.layers.Dense(1000, activation="softmax", name="predictions")(pooled)
    return explainers.bundle_from_model(
        keras.Model(base.input, out, name="mobilenetv2_fcn"), preprocessing="-1_1"
    )


def new_images(image: np.ndarray) -> Iterator[np.ndarray]:
    """Endless copies of ``image``, each differing from the last in one pixel (memo misses)."""
    counter = 0
    while True:
        copy = image.copy()
        flat = copy.reshape(-1)
        flat[counter % flat.size] ^= 1
        counter += 1
        yield copy


# ------------------------------------------------------------------------------------------------
# The main table
# ------------------------------------------------------------------------------------------------
def bench_model(
    name: str,
    bundle: explainers.ModelBundle,
    image: np.ndarray,
    *,
    repeats: int,
    peers: bool,
    methods: set[str] | None,
    batches: tuple[int, ...],
    budget_s: float,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    x = bundle.model_input(image)
    bundle.predict(image)  # what the dashboard does before any method runs
    target = int(np.argmax(bundle.predict(image)))
    layer = bundle.default_layer
    passes = Passes(bundle.model, x, target, layer)
    print(f"{name}: profiling batch sizes {batches} (load {load_average()})", flush=True)
    passes.profile(("f", "fb"), batches, max(3, repeats // 2))
    passes.profile(("fbl",), (1,), max(3, repeats // 2))
    sigma = PARAMS["smoothgrad"]["noise_level"] * float(x.max() - x.min())
    peer = peer_calls(bundle.model, x, target, layer, sigma) if peers else {}
    fresh = new_images(image)
    rows = []
    for info in explainers.available_methods(bundle):
        if not info.applicable or (methods and info.name not in methods):
            continue
        given = PARAMS.get(info.name, {})
        params = info.spec.resolve_params(given)
        plan, plus_forward, description = bound_plan(info.name, params, bundle, image.shape, layer)

        def ours(info: Any = info, given: dict = given) -> Any:
            return explainers.explain(bundle, image, info.name, target=target, **given)

        def ours_new(info: Any = info, given: dict = given) -> Any:
            return explainers.explain(bundle, next(fresh), info.name, target=target, **given)

        with PeakRSS() as memory:
            cold = timed_ms(ours)
            ours()
        bounds = passes.plan_calls(plan)
        candidates = {
            "ours": ours,
            "ours_new": ours_new,
            **bounds,
            "forward": passes.call("f", 1),
            **{peer_name: quiet(call) for peer_name, call in peer.get(info.name, {}).items()},
        }
        load = load_average()
        timing = interleaved(candidates, repeats, budget_s)
        best = min(bounds, key=lambda name: timing[name]["ms"])
        bound = timing[best]["ms"]
        bound_new = bound + (timing["forward"]["ms"] if plus_forward else 0.0)
        row = {
            "model": name,
            "method": info.name,
            "params": given,
            "ours_ms": timing["ours"]["ms"],
            "ours_new_ms": timing["ours_new"]["ms"],
            "ours_new_iqr": quartiles(timing["ours_new"]["warm_ms"]),
            "ours_cold_ms": cold,
            "peak_mb": memory.growth_mb,
            "bound": description + (" (+1 f on a new image)" if plus_forward else ""),
            "lower_bound_ms": bound,
            "lower_bound_batching": best.removeprefix("bound "),
            "lower_bound_candidates_ms": {
                k.removeprefix("bound "): timing[k]["ms"] for k in bounds
            },
            "lower_bound_new_ms": bound_new,
            "ratio": timing["ours"]["ms"] / bound,
            "ratio_new": timing["ours_new"]["ms"] / bound_new,
            "load": load,
            "rounds": timing["ours"]["rounds"],
            "peers": {},
        }
        for peer_name in peer.get(info.name, {}):
            result = timing[peer_name]
            if "error" in result:
                row["peers"][peer_name] = {"error": result["error"]}
                continue
            row["peers"][peer_name] = {
                "ms": result["ms"],
                "cold_ms": result["cold_ms"],
                "iqr": quartiles(result["warm_ms"]),
                "speedup": result["ms"] / row["ours_new_ms"],
                "ratio": result["ms"] / bound_new,
            }
        row["misses"], row["ties"] = target_misses(row)
        rows.append(row)
        peers_text = ", ".join(
            f"{k} {v['ms']:.0f} ms (×{v['speedup']:.2f})" if "ms" in v else f"{k} failed"
            for k, v in row["peers"].items()
        )
        print(
            f"{name:12s} {info.name:22s} ours {row['ours_ms']:8.1f} / new {row['ours_new_ms']:8.1f}"
            f" ms (cold {cold:6.0f})  bound {bound:8.1f} / {bound_new:8.1f}"
            f"  ratio {row['ratio']:.2f} / {row['ratio_new']:.2f}  {peers_text}"
            f"  [load {load}]{'  MISS: ' + '; '.join(row['misses']) if row['misses'] else ''}",
            flush=True,
        )
    profile = {
        "model": name,
        "input": list(x.shape[1:]),
        "per_batch_ms": {
            k: {str(b): v for b, v in t.items()} for k, t in passes.per_batch_ms.items()
        },
        "layer_bound": passes.layer_bound,
    }
    return rows, profile


def target_misses(row: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(the issue's targets this row misses, ties with a peer), in words.

    "Slower than a peer" needs the interquartile ranges of the two sets of warm calls not to
    overlap (ours entirely above the peer's); a slower median inside both spreads is a tie,
    reported apart, since its sign flips from run to run.
    """
    misses: list[str] = []
    ties: list[str] = []
    limit = 1.2 if row["method"] in PERTURBATION else 1.3
    for key, label in (("ratio", "same image"), ("ratio_new", "new image")):
        if row[key] > limit:
            misses.append(f"{label} ratio {row[key]:.2f} > {limit}")
    ours_iqr = row.get("ours_new_iqr")
    for peer, result in row["peers"].items():
        if "speedup" not in result:
            continue
        if result["speedup"] < 1.0:
            peer_iqr = result.get("iqr")
            if ours_iqr and peer_iqr and ours_iqr[0] <= peer_iqr[1]:
                ties.append(f"tie with {peer} (×{result['speedup']:.2f}, within the spread)")
            else:
                misses.append(f"slower than {peer} (×{result['speedup']:.2f})")
        elif result["ratio"] > 2.6 and result["speedup"] < 2.0:
            misses.append(
                f"{peer} is {result['ratio']:.1f}× its bound but only ×{result['speedup']:.2f}"
            )
    return misses, ties


def quartiles(values: list[float]) -> list[float]:
    """[25th, 75th] percentile of warm call times (ms)."""
    return [float(np.percentile(values, 25)), float(np.percentile(values, 75))]


# ------------------------------------------------------------------------------------------------
# Studies
# ------------------------------------------------------------------------------------------------
def batch_study(profiles: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-image time of f and fb against batch size (from the profiles), and the memory one fb
    batch takes: peak RSS growth of its first call, in a fresh process per (model, batch)."""
    memory: dict[str, dict[str, float]] = {}
    for profile in profiles:
        if profile["model"] == "demo":
            continue
        memory[profile["model"]] = {}
        for batch in MEMORY_BATCHES:
            out = subprocess.run(
                [sys.executable, __file__, "--memory-probe", f"{profile['model']}:{batch}"],
                capture_output=True,
                text=True,
                check=False,
            )
            try:
                memory[profile["model"]][str(batch)] = float(out.stdout.strip().splitlines()[-1])
            except (ValueError, IndexError):
                print(f"memory probe {profile['model']}:{batch} failed: {out.stderr[-300:]}")
    return {"profiles": profiles, "memory_mb": memory}


MEMORY_BATCHES = (1, 8, 16, 32, 64)


def memory_probe(spec: str) -> None:
    """Print the peak RSS growth (MB) of the first fb pass of one batch size on one model."""
    name, batch = spec.split(":")
    bundle, image = build_model(name)
    passes = Passes(bundle.model, bundle.model_input(image), 0, None)
    call = passes.call("fb", int(batch))
    with PeakRSS() as memory:
        call()
    print(f"{memory.growth_mb:.1f}")


#: Image sides and methods (with their parameters) of the image-size study.
SCALE_SIDES = (112, 224, 448)
SCALE_METHODS: dict[str, dict[str, Any]] = {
    "vanilla_gradients": {},
    "grad_cam": {},
    "smoothgrad": {"n_samples": 10},
    "integrated_gradients": {"steps": 10},
    "occlusion": {"patch_size": 32, "stride": 32},
    "score_cam": {"max_channels": 32},
}
#: Settings of the sample-count study (MobileNetV2 at 224 px).
SCALE_COUNTS: dict[str, list[dict[str, Any]]] = {
    "smoothgrad": [{"n_samples": n} for n in (5, 10, 20, 40)],
    "integrated_gradients": [{"steps": n} for n in (5, 10, 20, 40)],
    "occlusion": [
        {"patch_size": 32, "stride": 32},
        {"patch_size": 16, "stride": 16},
        {"patch_size": 16, "stride": 11},
    ],
    "score_cam": [{"max_channels": k} for k in (16, 64, 256)],
    "rise": [{"n_masks": n} for n in (128, 256, 512)],
}


def scale_study(repeats: int) -> dict[str, Any]:
    """Time against image size (fully convolutional MobileNetV2) and against sample count
    (MobileNetV2 at 224 px), ours against the bound, interleaved."""
    bundle = fully_convolutional_mobilenet()
    base = photo()
    sizes = []
    for side in SCALE_SIDES:
        image = np.asarray(Image.fromarray(base).resize((side, side), Image.BILINEAR))
        rows = _scale_rows(bundle, image, SCALE_METHODS, repeats)
        for row in rows:
            row["size"] = side
        sizes += rows
    mobilenet, image = build_model("mobilenetv2")
    registered = {m.name for m in explainers.available_methods()}
    counts = {m: s for m, s in SCALE_COUNTS.items() if m in registered}
    samples = []
    for method, settings in counts.items():
        for given in settings:
            samples += _scale_rows(mobilenet, image, {method: given}, repeats)
    return {"sizes": sizes, "samples": samples}


def _scale_rows(
    bundle: explainers.ModelBundle,
    image: np.ndarray,
    methods: dict[str, dict[str, Any]],
    repeats: int,
) -> list[dict[str, Any]]:
    x = bundle.model_input(image)
    target = int(np.argmax(bundle.predict(image)))
    layer = bundle.default_layer
    passes = Passes(bundle.model, x, target, layer)
    passes.profile(("f", "fb"), (1, 8, 16, 32), 2)
    rows = []
    for method, given in methods.items():
        params = explainers.get_method(method).resolve_params(given)
        plan, _, description = bound_plan(method, params, bundle, image.shape, layer)
        bounds = passes.plan_calls(plan)
        timing = interleaved(
            {
                "ours": lambda m=method, g=given: explainers.explain(
                    bundle, image, m, target=target, **g
                ),
                **bounds,
            },
            repeats,
        )
        best = min(bounds, key=lambda name: timing[name]["ms"])
        bound = timing[best]["ms"]
        row = {
            "method": method,
            "params": given,
            "bound": description,
            "ours_ms": timing["ours"]["ms"],
            "ours_cold_ms": timing["ours"]["cold_ms"],
            "lower_bound_ms": bound,
            "lower_bound_batching": best.removeprefix("bound "),
            "ratio": timing["ours"]["ms"] / bound,
            "size": int(x.shape[1]),
        }
        print(
            f"scale {row['size']:4d} {method:22s} {given}  ours {row['ours_ms']:8.1f}  bound "
            f"{row['lower_bound_ms']:8.1f}  ratio {row['ratio']:.2f}",
            flush=True,
        )
        rows.append(row)
    return rows


QUADRATURE_STEPS = (1, 2, 4, 8, 16, 32, 64, 128)


def quadrature_study(models: list[str]) -> dict[str, Any]:
    """Completeness error of Integrated Gradients against passes for every rule we offer.

    Error = |Σ attribution − (S(x) − S(x′))| / |S(x) − S(x′)| with a black baseline, S the class
    score (logit) of the top-1 class; passes = steps (forward + backward each).
    """
    out: dict[str, Any] = {}
    for name in models:
        bundle, image = build_model(name)
        target = int(np.argmax(bundle.predict(image)))
        table: dict[str, dict[str, float]] = {}
        delta = None
        for rule in QUADRATURE_RULES:
            table[rule] = {}
            for steps in QUADRATURE_STEPS:
                result = explainers.explain(
                    bundle, image, "integrated_gradients", target=target, steps=steps, rule=rule
                )
                table[rule][str(steps)] = result.extras["completeness_relative_error"]
                delta = result.extras["score_input"] - result.extras["score_baseline"]
            print(f"quadrature {name} {rule}: {table[rule]}", flush=True)
        out[name] = {"target": target, "delta": delta, "errors": table}
    return out


# ------------------------------------------------------------------------------------------------
# Markdown
# ------------------------------------------------------------------------------------------------
def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = psutil.virtual_memory().total / 2**30
    return (
        f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB RAM, TensorFlow {tf.__version__}, "
        f"Keras {keras.__version__}, Python {platform.python_version()}"
    )


def _fmt(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def main_table(rows: list[dict[str, Any]]) -> str:
    peers = sorted({p for row in rows for p in row["peers"]})
    head = [
        "model",
        "method",
        "ours ms",
        "ours ms, new image",
        "cold ms",
        "lower bound",
        "bound ms",
        "ratio",
        "ratio, new image",
        *[f"{p} ms (speed-up)" for p in peers],
        "peak MB",
        "rounds",
        "targets",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = []
        for peer in peers:
            result = row["peers"].get(peer)
            if result is None:
                cells.append("—")
            elif "error" in result:
                cells.append("fails")
            else:
                cells.append(f"{_fmt(result['ms'])} (×{result['speedup']:.1f})")
        lines.append(
            "| "
            + " | ".join(
                [
                    row["model"],
                    row["method"],
                    _fmt(row["ours_ms"]),
                    _fmt(row["ours_new_ms"]),
                    _fmt(row["ours_cold_ms"]),
                    row["bound"]
                    + (
                        f"; batches {row['lower_bound_batching']}"
                        if "lower_bound_batching" in row
                        else ""
                    ),
                    f"{_fmt(row['lower_bound_ms'])} / {_fmt(row['lower_bound_new_ms'])}",
                    f"{row['ratio']:.2f}",
                    f"{row['ratio_new']:.2f}",
                    *cells,
                    f"{row['peak_mb']:.0f}",
                    str(row["rounds"]),
                    "; ".join(row["misses"] + row.get("ties", [])) or "ok",
                ]
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def batch_markdown(study: dict[str, Any]) -> str:
    lines = []
    for profile in study["profiles"]:
        table = profile["per_batch_ms"]
        memory = study["memory_mb"].get(profile["model"], {})
        lines += [
            f"**{profile['model']}** (input {'×'.join(map(str, profile['input']))}): ms per image",
            "",
            "| batch | forward | forward + backward | fb peak RSS MB |",
            "|---|---|---|---|",
        ]
        for batch in sorted(table["f"], key=int):
            f_ms = table["f"][batch] / int(batch)
            fb_ms = table["fb"].get(batch, float("nan")) / int(batch)
            mem = memory.get(batch)
            lines.append(
                f"| {batch} | {f_ms:.1f} | {fb_ms:.1f} | {'—' if mem is None else f'{mem:.0f}'} |"
            )
        lines.append("")
    return "\n".join(lines)


def scale_markdown(study: dict[str, Any]) -> str:
    lines = [
        "Time against image side (MobileNetV2 without top + GAP + Dense, free input size):",
        "",
        "| method | params | side | ours ms | bound ms | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for row in study["sizes"]:
        lines.append(
            f"| {row['method']} | {_params(row['params'])} | {row['size']} | "
            f"{_fmt(row['ours_ms'])} | {_fmt(row['lower_bound_ms'])} | {row['ratio']:.2f} |"
        )
    lines += [
        "",
        "Time against sample count (MobileNetV2, 224 px):",
        "",
        "| method | params | bound | ours ms | bound ms | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for row in study["samples"]:
        lines.append(
            f"| {row['method']} | {_params(row['params'])} | {row['bound']} | "
            f"{_fmt(row['ours_ms'])} | {_fmt(row['lower_bound_ms'])} | {row['ratio']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def _params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items()) or "defaults"


def quadrature_markdown(study: dict[str, Any]) -> str:
    lines = []
    for name, result in study.items():
        errors = result["errors"]
        lines += [
            f"**{name}** (class {result['target']}, S(x) − S(black) = {result['delta']:.4g}): "
            "relative completeness error, in %",
            "",
            "| passes (steps) | " + " | ".join(errors) + " |",
            "|---|" + "---|" * len(errors),
        ]
        for steps in QUADRATURE_STEPS:
            cells = [f"{100 * errors[rule][str(steps)]:.3g}" for rule in errors]
            lines.append(f"| {steps} | " + " | ".join(cells) + " |")
        for threshold in (0.05, 0.01, 0.001):
            cells = []
            for rule in errors:
                reached = [s for s in QUADRATURE_STEPS if errors[rule][str(s)] <= threshold]
                cells.append(str(reached[0]) if reached else f"> {QUADRATURE_STEPS[-1]}")
            lines.append(f"| **passes for ≤ {100 * threshold:g}%** | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _replaced_lines(replaced: list[dict[str, Any]] | None) -> list[str]:
    lines = []
    for record in replaced or []:
        lines += [
            f"Rows {', '.join(record['rows'])} of the main table come from a later run, "
            f"`{record['command']}` ({record['date']}, {record['minutes']:.0f} min, load "
            f"{record['load_start']} at start, {record['load_end']} at end)"
            + (f": {record['reason']}" if record.get("reason") else "")
            + ".",
            "",
        ]
    if lines:
        lines.append("Everything else is from the run above.\n")
    return lines


def replace_rows(payload: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """``payload`` with the main-table rows that ``second`` also measured (same model and
    method) taken from ``second``, in the first run's order, and a record of which they are."""
    fresh = {(row["model"], row["method"]): row for row in second["rows"]}
    rows = [fresh.pop((row["model"], row["method"]), row) for row in payload["rows"]]
    replaced_keys = [(r["model"], r["method"]) for r in second["rows"]]
    rows += list(fresh.values())  # rows the first run did not have
    replaced = {
        "rows": [f"{model}/{method}" for model, method in replaced_keys],
        "command": second["command"],
        "date": second["date"],
        "load_start": second["load_start"],
        "load_end": second["load_end"],
        "minutes": second["minutes"],
    }
    return {**payload, "rows": rows, "replaced": [*payload.get("replaced", []), replaced]}


def results_markdown(payload: dict[str, Any], notes: str) -> str:
    sections = [
        f"# Benchmark results ({payload['date']})",
        "",
        f"Machine: {payload['machine']}.  ",
        f"Load average (1/5/15 min) at start: {payload['load_start']}; at end: "
        f"{payload['load_end']}. Medians of up to {payload['repeats']} interleaved warm rounds "
        f"(at least 3; slow methods get fewer within {payload['budget_s']:.0f} s, and methods "
        f"whose round takes under {FAST_ROUND_S:.0f} s up to {FAST_ROUNDS_FACTOR}× more; see "
        "`rounds`).  ",
        f"Command: `{payload['command']}` ({payload['minutes']:.0f} min).",
        "",
        *_replaced_lines(payload.get("replaced")),
        "> The machine is a shared virtual machine: absolute milliseconds move with its load "
        "(the benchmark itself keeps both cores busy, a load near 2). The ratios and speed-ups "
        "come from interleaved calls in one process and are what to read.",
        "",
        "## Every method against its lower bound and the peers",
        "",
        f"Parameters: {json.dumps(payload['params'])}; library batch size automatic "
        f"({AUTO_BATCH_PIXELS} input pixels per call: {auto_batch_size((224, 224))} images at "
        f"224 px, {auto_batch_size((96, 96))} at 96 px). Speed-up = peer ms / ours ms on a new "
        "image (nothing memoised). "
        "Bound ms: same image / new image. f = one forward pass of one image, fb = forward + "
        "backward to the input, both at their best batching. Targets: ratio ≤ 1.3 (≤ 1.2 for "
        "occlusion, Score-CAM, RISE); ≥ 2× faster than a peer that is above 2.6× its bound; "
        "never slower than a peer.",
        "",
        main_table(payload["rows"]),
    ]
    if payload.get("batch"):
        sections += ["## Batch size", "", batch_markdown(payload["batch"])]
    if payload.get("scale"):
        sections += ["## Scale", "", scale_markdown(payload["scale"])]
    if payload.get("quadrature"):
        sections += [
            "## Integrated Gradients: completeness error against passes",
            "",
            quadrature_markdown(payload["quadrature"]),
        ]
    dashboard = ROOT / "benchmarks" / "results" / "dashboard.md"
    if dashboard.exists():
        sections += ["## Dashboard", "", dashboard.read_text()]
    if notes:
        sections += [notes]
    return "\n".join(sections).rstrip() + "\n"


# ------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="demo,mobilenetv2,resnet50")
    parser.add_argument("--methods", default="", help="comma-separated registry names (all)")
    parser.add_argument("--repeats", type=int, default=None, help="warm rounds (7; quick: 3)")
    parser.add_argument("--quick", action="store_true", help="fewer rounds and batch sizes")
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument(
        "--budget",
        type=float,
        default=120.0,
        help="seconds of warm rounds per method; slow methods get fewer rounds (at least 3)",
    )
    parser.add_argument(
        "--studies",
        default=None,
        help="comma-separated: batch, scale, quadrature, or none (full: all; quick: none)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--results", type=Path, default=None, help="also write RESULTS.md here")
    parser.add_argument(
        "--notes",
        type=Path,
        default=ROOT / "benchmarks" / "NOTES.md",
        help="hand-written commentary appended to --results",
    )
    parser.add_argument(
        "--render",
        type=Path,
        default=None,
        help="only re-render the markdown from a bench.json (e.g. after editing NOTES.md)",
    )
    parser.add_argument(
        "--replace-from",
        type=Path,
        default=None,
        help="with --render: take the main-table rows of the models in this second bench.json "
        "instead (a model re-measured after its first measurement was disturbed); the "
        "document says which rows come from which run",
    )
    parser.add_argument(
        "--replace-reason", default="", help="with --replace-from: why, for the document"
    )
    parser.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        memory_probe(args.memory_probe)
        return
    if args.render:
        payload = json.loads(args.render.read_text())
        if args.replace_from:
            payload = replace_rows(payload, json.loads(args.replace_from.read_text()))
            payload["replaced"][-1]["reason"] = args.replace_reason
            (args.out / "bench.json").write_text(json.dumps(payload, indent=2))
        for row in payload["rows"]:
            row["misses"], row["ties"] = target_misses(row)
        notes = args.notes.read_text() if args.notes and args.notes.exists() else ""
        document = results_markdown(payload, notes)
        (args.results or args.out / "bench.md").write_text(document)
        print(document)
        return
    repeats = args.repeats or (3 if args.quick else 7)
    studies = args.studies or ("none" if args.quick else "batch,scale,quadrature")
    studies_set = set(studies.split(",")) - {"none", ""}
    methods = set(filter(None, args.methods.split(","))) or None
    started = time.time()
    machine = machine_line()
    load_start = load_average()
    print(f"{machine}; load {load_start}", flush=True)
    rows: list[dict[str, Any]] = []
    profiles = []
    models = args.models.split(",")
    for name in models:
        bundle, image = build_model(name)
        model_rows, profile = bench_model(
            name,
            bundle,
            image,
            repeats=repeats,
            peers=not args.no_peers,
            methods=methods,
            batches=QUICK_BATCHES if args.quick else BATCHES,
            budget_s=args.budget,
        )
        rows += model_rows
        profiles.append(profile)
        del bundle
        keras.backend.clear_session()
    payload: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine,
        "load_start": load_start,
        "repeats": repeats,
        "budget_s": args.budget,
        "params": PARAMS,
        "auto_batch_pixels": AUTO_BATCH_PIXELS,
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "rows": rows,
    }
    if "batch" in studies_set:
        payload["batch"] = batch_study(profiles)
    if "scale" in studies_set:
        payload["scale"] = scale_study(max(3, repeats // 2))
    if "quadrature" in studies_set:
        payload["quadrature"] = quadrature_study([m for m in ("demo", "mobilenetv2")])
    payload["load_end"] = load_average()
    payload["minutes"] = (time.time() - started) / 60
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(payload, indent=2))
    notes = args.notes.read_text() if args.notes and args.notes.exists() else ""
    document = results_markdown(payload, notes)
    (args.out / "bench.md").write_text(document)
    if args.results:
        args.results.write_text(document)
    print(main_table(rows))


if __name__ == "__main__":
    main()
