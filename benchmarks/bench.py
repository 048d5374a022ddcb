"""Speed of every method against its own lower bound and against the peer libraries, in one run.

    python -m pip install -r benchmarks/requirements.txt
    python benchmarks/bench.py                       # all models, writes benchmarks/results/
    python benchmarks/bench.py --models demo --repeats 3 --quick

For each model and method: the first call (tracing/compilation, what the dashboard's first click
pays), the median of ``--repeats`` warm calls, and the peak resident-memory growth. The lower bound
is measured in the same process on the same model: the compiled passes the method fundamentally
needs, each at its best batching. Peers (tf-explain's ``explain`` and raw functions, tf-keras-vis)
run at matched parameters in the same process. Ratios are what to read: this machine is shared.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402
import tensorflow as tf  # noqa: E402

import explainers  # noqa: E402

warnings.filterwarnings("ignore")
MB = 1024 * 1024

# Matched parameters: the same for us and for every peer that has the method.
PARAMS: dict[str, dict[str, Any]] = {
    "smoothgrad": {"n_samples": 20, "noise_level": 0.15},
    "integrated_gradients": {"steps": 20},
    "occlusion": {"patch_size": 16, "stride": 16},
    "score_cam": {"max_channels": 64},
}


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


def measure(fn: Callable[[], Any], repeats: int) -> dict[str, float]:
    """Cold (first) call, then the median of ``repeats`` warm calls, in ms; peak RSS growth."""
    with PeakRSS() as memory:
        started = time.perf_counter()
        fn()
        cold = time.perf_counter() - started
        warm = []
        for _ in range(repeats):
            started = time.perf_counter()
            fn()
            warm.append(time.perf_counter() - started)
    return {
        "cold_ms": cold * 1000,
        "ms": statistics.median(warm) * 1000,
        "peak_mb": memory.growth_mb,
    }


# ------------------------------------------------------------------------------------------------
# Lower bounds: plain compiled passes through the user's model, no explanation code at all.
# ------------------------------------------------------------------------------------------------
class Passes:
    def __init__(self, model: keras.Model, x: np.ndarray, target: int, repeats: int) -> None:
        self.model, self.x, self.target, self.repeats = model, x, target, repeats
        self._cache: dict[tuple[str, int], float] = {}

        @tf.function(reduce_retracing=True)
        def forward(batch: tf.Tensor) -> tf.Tensor:
            return model(batch, training=False)

        @tf.function(reduce_retracing=True)
        def forward_backward(batch: tf.Tensor) -> tf.Tensor:
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(batch)
                score = model(batch, training=False)[:, target]
            return tape.gradient(score, batch)

        self._fns = {"f": forward, "fb": forward_backward}

    def batch_ms(self, kind: str, batch: int) -> float:
        key = (kind, batch)
        if key not in self._cache:
            data = tf.constant(np.repeat(self.x, batch, axis=0))
            fn = self._fns[kind]
            self._cache[key] = measure(lambda: fn(data).numpy(), self.repeats)["ms"]
        return self._cache[key]

    def best(self, kind: str, n: int) -> float:
        """n passes at their best batching: one batch of n, or batches of 16/32/64."""
        if n == 0:
            return 0.0
        options = [self.batch_ms(kind, n)] if n <= 64 else []
        for size in (16, 32, 64):
            if size < n or not options:
                options.append(math.ceil(n / size) * self.batch_ms(kind, min(size, n)))
        return min(options)


def lower_bound(method: str, passes: Passes, bundle: explainers.ModelBundle) -> float:
    p = {**explainers.get_method(method).resolve_params(PARAMS.get(method, {}))}
    one_fb, one_f = passes.best("fb", 1), passes.best("f", 1)
    if method in (
        "vanilla_gradients",
        "gradient_x_input",
        "guided_backprop",
        "grad_cam",
        "grad_cam_plus_plus",
        "layer_cam",
    ):
        return one_fb
    if method == "guided_grad_cam":
        return 2 * one_fb
    if method == "cam":
        return one_f
    if method == "smoothgrad":
        return passes.best("fb", int(p["n_samples"]))
    if method == "integrated_gradients":
        return passes.best("fb", int(p["steps"]))
    if method == "occlusion":
        h, w = bundle.model_size_for((224, 224))
        from explainers.occlusion import patch_positions

        n = len(patch_positions(h, p["patch_size"], p["stride"] or p["patch_size"])) * len(
            patch_positions(w, p["patch_size"], p["stride"] or p["patch_size"])
        )
        return one_f + passes.best("f", n)
    if method == "score_cam":
        channels = bundle.layer(bundle.default_layer).output_shape[-1]
        k = min(channels, int(p["max_channels"]) or channels)
        return one_f + passes.best("f", k)
    raise KeyError(method)


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
def build_models(names: list[str]) -> dict[str, tuple[explainers.ModelBundle, np.ndarray]]:
    photo = explainers.load_image(ROOT / "assets/samples/photos/cat_chelsea.jpg")
    models: dict[str, tuple[explainers.ModelBundle, np.ndarray]] = {}
    for name in names:
        if name == "mobilenetv2":
            bundle = explainers.bundle_from_model(keras.applications.MobileNetV2(weights=None))
            models[name] = (bundle, bundle.resize(photo))
        elif name == "resnet50":
            bundle = explainers.bundle_from_model(keras.applications.ResNet50(weights=None))
            models[name] = (bundle, bundle.resize(photo))
        elif name == "demo":
            bundle = explainers.load_model(
                ROOT / "assets/models/demo_shapes.keras",
                labels=ROOT / "assets/models/demo_labels.txt",
            )
            sample = sorted((ROOT / "assets/samples").glob("shapes_star_*[0-9].png"))[0]
            models[name] = (bundle, explainers.load_image(sample))
        else:
            raise SystemExit(f"unknown model {name!r}")
    return models


def bench_model(
    name: str, bundle: explainers.ModelBundle, image: np.ndarray, repeats: int, peers: bool
) -> list[dict[str, Any]]:
    x = bundle.model_input(image)
    target = int(np.argmax(bundle.predict(image)))
    layer = bundle.default_layer
    passes = Passes(bundle.model, x, target, repeats)
    sigma = PARAMS["smoothgrad"]["noise_level"] * float(x.max() - x.min())
    peer = peer_calls(bundle.model, x, target, layer, sigma) if peers else {}
    rows = []
    for info in explainers.available_methods(bundle):
        if not info.applicable:
            continue
        params = PARAMS.get(info.name, {})
        ours = measure(
            lambda info=info, params=params: explainers.explain(
                bundle, image, info.name, target=target, **params
            ),
            repeats,
        )
        bound = lower_bound(info.name, passes, bundle)
        row = {
            "model": name,
            "method": info.name,
            "ours_ms": ours["ms"],
            "ours_cold_ms": ours["cold_ms"],
            "peak_mb": ours["peak_mb"],
            "lower_bound_ms": bound,
            "ratio": ours["ms"] / bound,
            "peers": {},
        }
        for peer_name, call in peer.get(info.name, {}).items():
            try:
                timing = measure(call, repeats)
                row["peers"][peer_name] = {
                    "ms": timing["ms"],
                    "cold_ms": timing["cold_ms"],
                    "speedup": timing["ms"] / ours["ms"],
                }
            except Exception as exc:  # a peer failing is a finding, not a crash
                row["peers"][peer_name] = {"error": f"{type(exc).__name__}: {str(exc)[:120]}"}
        rows.append(row)
        peers_text = ", ".join(
            f"{k} {v['ms']:.0f} ms (×{v['speedup']:.1f})" if "ms" in v else f"{k} failed"
            for k, v in row["peers"].items()
        )
        print(
            f"{name:12s} {info.name:22s} ours {ours['ms']:8.1f} ms (cold {ours['cold_ms']:7.0f})"
            f"  bound {bound:8.1f}  ratio {row['ratio']:.2f}  {peers_text}",
            flush=True,
        )
    return rows


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, TensorFlow {tf.__version__}, Keras "
        f"{keras.__version__}, Python {platform.python_version()}"
    )


def markdown(rows: list[dict[str, Any]], machine: str, repeats: int) -> str:
    peers = sorted({p for row in rows for p in row["peers"]})
    head = [
        "model",
        "method",
        "ours ms",
        "cold ms",
        "lower bound ms",
        "ratio",
        *[f"{p} ms" for p in peers],
        "best peer / ours",
        "peak MB",
    ]
    lines = [
        f"Machine: {machine}. Median of {repeats} warm runs; cold = first call.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for row in rows:
        timings = [row["peers"].get(p, {}) for p in peers]
        cells = [
            f"{t['ms']:.0f}" if "ms" in t else ("fails" if "error" in t else "—") for t in timings
        ]
        speedups = [t["speedup"] for t in timings if "speedup" in t]
        best = f"{min(speedups):.1f}×" if speedups else "—"
        lines.append(
            "| "
            + " | ".join(
                [
                    row["model"],
                    row["method"],
                    f"{row['ours_ms']:.0f}",
                    f"{row['ours_cold_ms']:.0f}",
                    f"{row['lower_bound_ms']:.0f}",
                    f"{row['ratio']:.2f}",
                    *cells,
                    best,
                    f"{row['peak_mb']:.0f}",
                ]
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="demo,mobilenetv2,resnet50")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    machine = machine_line()
    print(machine, flush=True)
    rows: list[dict[str, Any]] = []
    for name, (bundle, image) in build_models(args.models.split(",")).items():
        rows += bench_model(name, bundle, image, args.repeats, not args.no_peers)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d")
    payload = {
        "date": stamp,
        "machine": machine,
        "repeats": args.repeats,
        "params": PARAMS,
        "rows": rows,
    }
    (args.out / "bench.json").write_text(json.dumps(payload, indent=2))
    table = markdown(rows, machine, args.repeats)
    (args.out / "bench.md").write_text(f"# Benchmark {stamp}\n\n{table}")
    print(table)


if __name__ == "__main__":
    main()
