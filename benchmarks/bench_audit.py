"""Audit throughput and memory: the dataset audit end to end against the model's own passes.

    nice python benchmarks/bench_audit.py                     # everything, ~10 min on 2 cores
    nice python benchmarks/bench_audit.py --images 160 --skip-ray --skip-memory   # quick

Measured in one process, one after the other (so machine load moves all numbers alike):

1. **Bounds** on MobileNetV2 (224 px, random weights, ``keras.applications.MobileNetV2(weights=
   None)``): plain ``tf.function``s over the model at batch 8 on tensors already in memory —
   forward (f), forward + backward to Grad-CAM's layer (fbl, what Grad-CAM needs) and forward +
   backward to the input (fb). Images per second.
2. **Per image**: what the audit did before batching — for each image read the JPEG, predict,
   ``explain(..., "grad_cam", target=prediction)``, statistics and the stored map.
3. **Local** (``engine="local"``): ``run_audit`` on a folder of JPEG files (decode, resize,
   compute, write), warm (the model loaded and traced on another folder first).
4. **Ray** (``engine="ray"``): ``ray.init(num_cpus=2)``, the same folder, 2 actors × 1 CPU and
   1 actor × 2 CPUs; steady state (the marginal rate: 3N images against N, each with a fresh
   actor pool) and end to end (actor start-up included).
5. **Memory**: ``run_audit`` on ``demo:honest:5000`` with the demo model; the process's resident
   memory when 500 and when 5000 images are done (sampled at the progress callback).
6. **Bytes per image** of the run folders (table parts, maps, masks).

Also checked: the batched maps equal ``explain()``'s per image, and batch size 8 and 3 give the
same bits. Writes ``benchmarks/results/audit.json`` and ``benchmarks/results/audit.md`` (the
"Audit throughput" section of RESULTS.md is that file).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import psutil  # noqa: E402
from PIL import Image  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def make_jpeg_folder(root: Path, n: int, seed: int) -> None:
    """``n`` 256×256 JPEGs (smooth random colour fields with shapes) in class folders 0..3."""
    rng = np.random.default_rng(seed)
    from explainers.io.demo_data import generate_sample

    for i in range(n):
        sample = generate_sample(np.random.default_rng([seed, i]), size=256, label=i % 4)
        folder = root / str(i % 4)
        folder.mkdir(parents=True, exist_ok=True)
        noise = rng.integers(-8, 9, sample.image.shape)
        image = np.clip(sample.image.astype(int) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(image).save(folder / f"img_{i:05d}.jpg", quality=90)


def per_image_rate(fn, x, repeats: int = 5) -> float:
    fn(x).numpy()  # trace + warm
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn(x).numpy()
        times.append(time.perf_counter() - started)
    return len(x) / float(np.median(times))


def bounds(bundle, batch: int) -> dict[str, float]:
    import tensorflow as tf

    model, layer = bundle.model, bundle.default_layer
    x = tf.constant(
        np.random.default_rng(0).uniform(-1, 1, (batch, 224, 224, 3)).astype(np.float32)
    )
    import keras

    view = keras.Model(model.inputs, [model.get_layer(layer).output, model.outputs[0]])

    @tf.function
    def forward(batch_x):
        return model(batch_x, training=False)

    @tf.function
    def forward_backward_layer(batch_x):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(batch_x)
            activation, output = view(batch_x, training=False)
            score = tf.reduce_max(output, axis=-1)
        return tape.gradient(score, activation)

    @tf.function
    def forward_backward(batch_x):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(batch_x)
            score = tf.reduce_max(model(batch_x, training=False), axis=-1)
        return tape.gradient(score, batch_x)

    return {
        "f": per_image_rate(forward, x),
        "fbl": per_image_rate(forward_backward_layer, x),
        "fb": per_image_rate(forward_backward, x),
    }


def per_image_audit_rate(bundle, dataset, n: int) -> float:
    """The pre-batching audit loop for ``n`` images (after one warm-up image)."""
    import explainers
    from explainers.audit.run import map_statistics, stored_map

    def one(i: int) -> None:
        image, _, _ = dataset.read_item(i)
        probs = bundle.predict(image)
        result = explainers.explain(bundle, image, "grad_cam", target=int(np.argmax(probs)))
        map_statistics(result.attribution)
        stored_map(result.attribution, 32)

    one(0)
    started = time.perf_counter()
    for i in range(1, n + 1):
        one(i)
    return n / (time.perf_counter() - started)


class Timeline:
    """A ``run_audit`` progress callback that notes when each image's result arrived, for the
    rate *inside* one run: images from the first result to the last over the time between them
    (start-up — TensorFlow, tracing, Ray actors — is before the first result, so it drops out)."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, int]] = []

    def __call__(self, fraction: float, message: str) -> None:
        if message[:1].isdigit():  # "k/N images · …"; not "committed …" or "resumed …"
            self.marks.append((time.perf_counter(), int(message.split("/")[0])))

    def rate(self) -> float:
        (t0, n0), (t1, n1) = self.marks[0], self.marks[-1]
        return (n1 - n0) / max(t1 - t0, 1e-9)


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def check_equality(bundle, dataset, n: int = 12) -> dict[str, float]:
    """Batched grad_cam against explain() per image, and batch 8 against batch 3."""
    import explainers
    from explainers.audit.batched import explain_batch

    images = [dataset.read_item(i)[0] for i in range(n)]
    x = np.stack([bundle.model_input(im)[0] for im in images]).astype(np.float32)
    layer = bundle.default_layer
    whole = explain_batch(bundle, x[:8], "grad_cam", layer, {"relu": True})
    part = explain_batch(bundle, x[5:8], "grad_cam", layer, {"relu": True})
    worst = 0.0
    for i in range(4):
        result = explainers.explain(bundle, images[i], "grad_cam", target=int(whole.targets[i]))
        scale = max(float(np.abs(result.model_attribution).max()), 1e-30)
        worst = max(worst, float(np.abs(result.model_attribution - whole.maps[i]).max()) / scale)
    return {
        "max_relative_difference_vs_explain": worst,
        "batch_8_vs_3_bitwise_equal": bool(np.array_equal(whole.maps[5:8], part.maps)),
        "batch_8_vs_3_max_difference": float(np.abs(whole.maps[5:8] - part.maps).max()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=320, help="JPEGs in the throughput set")
    parser.add_argument("--memory-images", type=int, default=5000)
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()

    import keras

    import explainers
    from explainers.audit import demo_dataset, image_folder, open_run, run_audit

    RESULTS.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-audit-"))
    report: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_at_start": os.getloadavg(),
        "images": args.images,
    }
    begun = time.perf_counter()
    try:
        model_path = work / "mobilenetv2.keras"
        keras.applications.MobileNetV2(weights=None).save(model_path)
        bundle = explainers.load_model(model_path)
        make_jpeg_folder(work / "jpeg", args.images, seed=1)
        make_jpeg_folder(work / "warm", 16, seed=2)
        make_jpeg_folder(work / "half", args.images // 2, seed=1)  # the first half of "jpeg"
        data, warm = image_folder(work / "jpeg"), image_folder(work / "warm")
        half = image_folder(work / "half")
        if not args.skip_ray:
            make_jpeg_folder(work / "triple", 3 * args.images, seed=1)  # "jpeg" and 2N more
            triple = image_folder(work / "triple")
        # The longer set for rates inside one run (3N images with Ray, else N).
        long_set = data if args.skip_ray else triple

        report["equality"] = check_equality(bundle, data)
        print("equality", report["equality"], flush=True)
        run_audit(bundle, warm, work / "run-warm", chunk_size=64)  # trace the batched pass
        rounds: list[dict] = []

        def local_round(tag: str) -> None:
            """Bounds, then the local audit, then the per-image loop: one interleaved round."""
            measured = {"bounds": bounds(bundle, 8)}
            half_summary = run_audit(bundle, half, work / f"run-local-half-{tag}", chunk_size=64)
            out = work / f"run-local-{tag}"
            summary = run_audit(bundle, data, out, chunk_size=64)
            timeline = Timeline()
            run_audit(
                bundle, long_set, work / f"run-local-long-{tag}", chunk_size=64, progress=timeline
            )
            measured["local"] = {
                "in_run_images_per_s": timeline.rate(),
                "images_per_s": summary.images_per_second,
                "steady_images_per_s": (len(data) - len(half))
                / max(summary.seconds - half_summary.seconds, 1e-9),
                "seconds": summary.seconds,
            }
            measured["per_image"] = per_image_audit_rate(bundle, data, 12)
            rounds.append(measured)
            print("round", tag, measured, flush=True)

        local_round("a")
        local_round("b")
        local_run = open_run(work / "run-local-a")
        report["bytes_mobilenetv2"] = {
            "table": folder_bytes(work / "run-local-a" / "table") / args.images,
            "maps": folder_bytes(work / "run-local-a" / "maps") / args.images,
            "total": folder_bytes(work / "run-local-a") / args.images,
        }

        if not args.skip_ray:
            import ray

            started = time.perf_counter()
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            report["ray_init_s"] = time.perf_counter() - started
            report["ray"] = {}
            for label, actors, cpus in (("2 actors x 1 CPU", 2, 1.0), ("1 actor x 2 CPUs", 1, 2.0)):
                # The marginal rate: the same audit on the N images and on 3N (the N first),
                # each with a fresh actor pool; the difference of their times is what the 2N
                # more images cost, start-up (Ray, TensorFlow in each actor, ~20 s) cancelled.
                # (N/2 against N, as for the local engine, left too little computing time next
                # to start-up's jitter.)
                timeline = Timeline()
                long_summary = run_audit(
                    model_path,
                    triple,
                    work / f"run-ray-triple-{actors}",
                    chunk_size=64,
                    engine="ray",
                    actors=actors,
                    cpus_per_actor=cpus,
                    progress=timeline,
                )
                out = work / f"run-ray-{actors}"
                summary = run_audit(
                    model_path,
                    data,
                    out,
                    chunk_size=64,
                    engine="ray",
                    actors=actors,
                    cpus_per_actor=cpus,
                )
                ray_run = open_run(out)
                same_predictions = ray_run.table.column("prediction").to_pylist() == (
                    local_run.table.column("prediction").to_pylist()
                )
                a = ray_run.maps["grad_cam"].astype(np.float32)
                b = local_run.maps["grad_cam"].astype(np.float32)
                report["ray"][label] = {
                    "images_per_s_end_to_end": summary.images_per_second,
                    "in_run_images_per_s": timeline.rate(),
                    "steady_images_per_s": (len(triple) - len(data))
                    / max(long_summary.seconds - summary.seconds, 1e-9),
                    "seconds_triple": long_summary.seconds,
                    "seconds": summary.seconds,
                    "same_predictions_as_local": same_predictions,
                    "max_map_difference_vs_local": float(np.nanmax(np.abs(a - b))),
                }
                print("ray", label, report["ray"][label], flush=True)
            ray.shutdown()
            local_round("c")  # after Ray: the machine's load then

        if not args.skip_memory:
            demo = explainers.load_model(
                ROOT / "assets/models/demo_shortcut.keras",
                labels=ROOT / "assets/models/demo_labels.txt",
            )
            process = psutil.Process()
            marks: dict[int, float] = {}
            samples: list[tuple[int, float]] = []

            def memory(fraction: float, message: str) -> None:
                if not message.startswith("committed"):
                    return
                done = int(message.split()[1].split("/")[0])
                rss = process.memory_info().rss / 2**20
                samples.append((done, rss))
                for mark in (500, args.memory_images):
                    if done >= mark and mark not in marks:
                        marks[mark] = rss

            n = args.memory_images
            dataset = demo_dataset("shortcut_half", n, seed=0)
            run_audit(demo, demo_dataset("shortcut_half", 64, seed=9), work / "mem-warm")
            rss_before = process.memory_info().rss / 2**20
            summary = run_audit(demo, dataset, work / "run-memory", progress=memory)
            report["memory"] = {
                "images": n,
                "rss_mb_before": rss_before,
                "rss_mb_at_500": marks.get(500),
                f"rss_mb_at_{n}": marks.get(n),
                "growth_500_to_end_percent": 100 * (marks[n] / marks[500] - 1),
                "max_rss_mb": max(r for _, r in samples),
                "images_per_s": summary.images_per_second,
            }
            report["bytes_demo_shortcut"] = {
                "table": folder_bytes(work / "run-memory" / "table") / n,
                "maps": folder_bytes(work / "run-memory" / "maps") / n,
                "masks": folder_bytes(work / "run-memory" / "masks") / n,
                "total": folder_bytes(work / "run-memory") / n,
            }
            print("memory", report["memory"], report["bytes_demo_shortcut"], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["rounds"] = rounds
    median = lambda values: float(np.median(values))  # noqa: E731
    report["bounds_images_per_s"] = {
        k: median([r["bounds"][k] for r in rounds]) for k in ("f", "fbl", "fb")
    }
    report["per_image_images_per_s"] = median([r["per_image"] for r in rounds])
    report["local"] = {
        k: median([r["local"][k] for r in rounds])
        for k in ("images_per_s", "steady_images_per_s", "in_run_images_per_s", "seconds")
    }
    report["load_at_end"] = os.getloadavg()
    report["minutes"] = (time.perf_counter() - begun) / 60
    (RESULTS / "audit.json").write_text(json.dumps(report, indent=2))
    (RESULTS / "audit.md").write_text(markdown(report))
    print(markdown(report))
    return 0


def markdown(r: dict) -> str:
    b = r["bounds_images_per_s"]
    lines = [
        "## Audit throughput",
        "",
        f"MobileNetV2 224 px, random weights, Grad-CAM, {r['images']} JPEG files (256×256) in "
        f"class folders; {r['machine']}; load at start "
        f"{' / '.join(f'{v:.2f}' for v in r['load_at_start'])}, at end "
        f"{' / '.join(f'{v:.2f}' for v in r['load_at_end'])}. "
        f"Command: `nice python benchmarks/bench_audit.py` ({r['minutes']:.0f} min).",
        "",
        "| what | images/s | × fwd+bwd to the layer | × fwd+bwd to the input |",
        "|---|---|---|---|",
    ]

    def row(name: str, rate: float) -> None:
        lines.append(f"| {name} | {rate:.1f} | {rate / b['fbl']:.2f} | {rate / b['fb']:.2f} |")

    row("bound: forward only, batch 8, tensors in memory", b["f"])
    row("bound: forward + backward to Grad-CAM's layer, batch 8", b["fbl"])
    row("bound: forward + backward to the input, batch 8", b["fb"])
    row("audit before batching (per image explain())", r["per_image_images_per_s"])
    row("audit, engine=local, end to end (warm model)", r["local"]["images_per_s"])
    row("audit, engine=local, steady state (marginal)", r["local"]["steady_images_per_s"])
    row("audit, engine=local, inside one run", r["local"]["in_run_images_per_s"])
    for label, ray_row in r.get("ray", {}).items():
        row(f"audit, engine=ray, {label}, steady state (marginal)", ray_row["steady_images_per_s"])
        row(f"audit, engine=ray, {label}, inside one run", ray_row["in_run_images_per_s"])
        row(f"audit, engine=ray, {label}, end to end", ray_row["images_per_s_end_to_end"])
    eq = r["equality"]
    lines += [
        "",
        f"Medians of {len(r['rounds'])} interleaved rounds (bounds, local audit, per-image loop; "
        "the last round after the Ray runs); each round: "
        + "; ".join(
            f"fbl {x['bounds']['fbl']:.1f}, fb {x['bounds']['fb']:.1f}, local "
            f"{x['local']['images_per_s']:.1f} (steady {x['local']['steady_images_per_s']:.1f}, "
            f"inside one run {x['local']['in_run_images_per_s']:.1f})"
            for x in r["rounds"]
        )
        + " images/s. Steady state (marginal): local (N − N/2) / (time for N − time for N/2), "
        "Ray 2N / (time for 3N − time for N), the same audit on both sets, so start-up cancels "
        "(but its jitter does not). Inside one run: on the 3N set, images from the first result "
        "to the last over the time between them (the progress callback's timestamps), so "
        "start-up is left out of the one run itself.",
        "",
        f"Batched maps against `explain()` per image: largest difference "
        f"{eq['max_relative_difference_vs_explain']:.2g} of the map's maximum; batch 8 against "
        f"batch 3 bitwise equal: {eq['batch_8_vs_3_bitwise_equal']}.",
    ]
    if "ray" in r:
        local = r["local"]
        for label, ray_row in r["ray"].items():
            lines.append(
                f"Ray {label} against the local engine: "
                f"{ray_row['in_run_images_per_s'] / local['in_run_images_per_s']:.2f}× inside "
                f"one run, {ray_row['steady_images_per_s'] / local['steady_images_per_s']:.2f}× "
                "marginal."
            )
        lines.append(f"Ray start-up (`ray.init(num_cpus=2)`): {r['ray_init_s']:.1f} s.")
        for label, ray_row in r["ray"].items():
            lines.append(
                f"Ray {label}: same predictions as local: {ray_row['same_predictions_as_local']}; "
                f"largest stored-map difference {ray_row['max_map_difference_vs_local']:.2g}; "
                f"{ray_row['seconds']:.0f} s in all."
            )
    if "memory" in r:
        m, n = r["memory"], r["memory"]["images"]
        lines += [
            "",
            f"Memory, `demo:shortcut_half:{n}`, demo model, Grad-CAM, local engine: resident "
            f"{m['rss_mb_at_500']:.0f} MB at 500 images, {m[f'rss_mb_at_{n}']:.0f} MB at {n} "
            f"({m['growth_500_to_end_percent']:+.1f} %), at most {m['max_rss_mb']:.0f} MB; "
            f"{m['images_per_s']:.0f} images/s.",
        ]
        by = r["bytes_demo_shortcut"]
        lines.append(
            f"Bytes per image (S = 32, one method): table {by['table']:.0f}, maps "
            f"{by['maps']:.0f}, masks {by['masks']:.0f} (object + marker), run folder "
            f"{by['total']:.0f}."
        )
    bm = r["bytes_mobilenetv2"]
    lines.append(
        f"MobileNetV2 folder run: table {bm['table']:.0f} B/image (with paths), maps "
        f"{bm['maps']:.0f} B/image, run folder {bm['total']:.0f} B/image."
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
