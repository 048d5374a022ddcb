"""Incremental occlusion (Krypton) against full re-inference and tf-explain, in one run.

    python benchmarks/bench_occlusion.py --results benchmarks/RESULTS.md  # all, 10–20 min
    python benchmarks/bench_occlusion.py --models mobilenetv2 --rounds 1    # quick look

For MobileNetV2 and ResNet50 (``keras.applications``, 224 px, random weights whose
BatchNormalization statistics are set from the benchmark image, so that activations neither vanish
(MobileNetV2's do, to 1e-12, with the initial statistics) nor saturate and the maps have
structure), on the cat photo, for patch 16 and 32 with stride = patch and stride = patch / 2:

* **full**: ``explain(..., "occlusion", mode="full")``, the full-pass path (one compiled forward
  per batch of occluded images);
* **incremental**: ``mode="incremental"``, exact (Krypton's incremental inference);
* **approximate τ**: ``mode="approximate", threshold=τ`` for two thresholds, with its error
  against the exact map: Pearson correlation and the overlap of the top 10 % pixels;
* **tf-explain**: ``OcclusionSensitivity(batch_size=32).explain`` as ``bench.py`` times it
  (stride = patch only: tf-explain has no stride).

Ours explain the logit (``score="logit"``, the same cost as the probability) with the automatic
batch size. Every candidate is traced first (a full-pass call and each geometry's incremental
functions; tf-explain once); then ``--rounds`` rounds call each candidate once, in a new random
order each round, and the medians of wall and process CPU time are reported. On a shared machine
the CPU time is the steadier of the two. Speed-ups are full / candidate from the same rounds.

For one geometry per model (patch 16, stride 16) the exact incremental pass is also profiled
(TensorFlow's profiler, one batch): the share of its op time in the layers that still run on
whole maps, in cropped layers, and in the window gathers (GatherNd / where), next to the share of
multiply-adds the whole-map layers hold: what limits the speed-up.

Writes ``benchmarks/results/occlusion.json`` and ``benchmarks/results/occlusion.md`` and, with
``--results``, puts that section into RESULTS.md (replacing an earlier one).
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from bench import load_average, machine_line, photo, quiet  # noqa: E402

import explainers  # noqa: E402
from explainers.core import incremental  # noqa: E402
from explainers.core.fills import fill_pixels  # noqa: E402
from explainers.core.runner import chunks, resolve_batch_size  # noqa: E402
from explainers.methods.occlusion import (  # noqa: E402
    incremental_batch_size,
    occluded_inputs,
    patch_positions,
)
from tests.models_zoo import calibrate_batchnorm  # noqa: E402

MODELS = ("mobilenetv2", "resnet50")
#: (patch, stride) geometries at 224 px: 196, 729, 49 and 169 patches.
GEOMETRIES = ((16, 16), (16, 8), (32, 32), (32, 16))
THRESHOLDS = (0.7, 0.5)
SECTION = "## Incremental occlusion"


def build(name: str) -> tuple[explainers.ModelBundle, np.ndarray]:
    keras.utils.set_random_seed(0)
    model = {
        "mobilenetv2": keras.applications.MobileNetV2,
        "resnet50": keras.applications.ResNet50,
    }[name](weights=None)
    bundle = explainers.bundle_from_model(model)
    image = bundle.resize(photo())
    calibrate_batchnorm(model, bundle.model_input(image))
    return bundle, image


def corners_of(size: int, patch: int, stride: int) -> np.ndarray:
    positions = patch_positions(size, patch, stride)
    return np.array([(r, c) for r in positions for c in positions], np.int32)


def measure(
    candidates: dict[str, Callable[[], Any]], rounds: int
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Rounds of one call per candidate (shuffled): medians of wall and CPU seconds, and each
    candidate's last output."""
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in candidates}
    last: dict[str, Any] = {}
    order = random.Random(0)
    for _ in range(rounds):
        for name in order.sample(list(candidates), len(candidates)):
            wall, cpu = time.perf_counter(), time.process_time()
            last[name] = candidates[name]()
            times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    summary = {
        name: {
            "wall_s": float(np.median([t[0] for t in values])),
            "cpu_s": float(np.median([t[1] for t in values])),
            "rounds": len(values),
        }
        for name, values in times.items()
    }
    return summary, last


def top_overlap(a: np.ndarray, b: np.ndarray, fraction: float = 0.1) -> float:
    """|top fraction of a ∩ top fraction of b| / |top fraction|, pixels ranked by value."""
    k = max(1, round(fraction * a.size))
    top_a = set(np.argsort(-a.ravel(), kind="stable")[:k].tolist())
    top_b = set(np.argsort(-b.ravel(), kind="stable")[:k].tolist())
    return len(top_a & top_b) / k


def profile_shares(plan: incremental.Plan, x: np.ndarray, fill: np.ndarray, batch: int) -> dict:
    """Shares of the op time of one profiled incremental batch: whole-map layers, cropped
    layers' own work, window gathers; and the whole-map layers' share of multiply-adds."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    caches = plan.clean_caches(x)
    function = plan._batch_fn()
    corners = plan.geometry.corners[:batch]
    args = (tf.constant(corners), tf.constant(plan.offsets[:batch]), tf.constant(fill), caches)
    function(*args)
    cropped = {
        incremental._scope_name(step.path)
        for step in plan.steps
        if getattr(step, "window", None) is not None
    }
    logdir = tempfile.mkdtemp(prefix="occlusion_profile_")
    tf.profiler.experimental.start(logdir)
    function(*args)
    tf.profiler.experimental.stop()
    space = xplane_pb2.XSpace()
    space.ParseFromString(
        Path(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)[0]).read_bytes()
    )
    shares: collections.Counter[str] = collections.Counter()
    by_type: collections.Counter[str] = collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if ":" not in name or "/" not in name:
                    continue  # executor and function wrappers, not ops
                op_name, op_type = name.rsplit(":", 1)
                scope = op_name.split("/", 1)[0]
                seconds = event.duration_ps / 1e12
                by_type[op_type] += seconds
                if op_type in ("GatherNd", "SelectV2", "Pack", "BroadcastTo", "ClipByValue"):
                    shares["window gathers"] += seconds
                elif scope in cropped:
                    shares["cropped layers"] += seconds
                else:
                    shares["whole-map layers"] += seconds
    total = sum(shares.values()) or 1.0
    whole_macs = sum(c.full_macs for c in plan.costs if c.window is None)
    return {
        "op_time_shares": {k: round(v / total, 3) for k, v in shares.most_common()},
        "top_op_types": {k: round(v / total, 3) for k, v in by_type.most_common(6)},
        "whole_map_layers_share_of_full_macs": round(whole_macs / plan.full_macs, 3),
        "whole_map_layers_share_of_incremental_macs": round(whole_macs / plan.incremental_macs, 3),
        "first_whole_map_layer": next(
            (c.path for c in plan.costs if c.window is None and c.full_macs), None
        ),
    }


def bench_model(
    name: str,
    rounds: int,
    thresholds: tuple[float, ...],
    geometries: tuple[tuple[int, int], ...] = GEOMETRIES,
) -> dict[str, Any]:
    from tf_explain.core.occlusion_sensitivity import OcclusionSensitivity

    bundle, image = build(name)
    x = bundle.model_input(image)
    target = int(np.argmax(bundle.predict(image)))
    fill = bundle.preprocess(fill_pixels("gray", image))
    fill_t = tf.constant(fill, tf.float32)
    shape = tuple(int(d) for d in x.shape[1:])
    full_batch = resolve_batch_size(0, shape)
    inc_batch = incremental_batch_size(0, shape)
    rows: list[dict[str, Any]] = []

    def ours(mode: str, patch: int, stride: int, threshold: float = 0.5) -> Callable[[], Any]:
        def call() -> Any:
            return explainers.explain(
                bundle,
                image,
                "occlusion",
                target=target,
                mode=mode,
                patch_size=patch,
                stride=stride,
                threshold=threshold,
                score="logit",
            )

        return call

    def tf_explain(patch: int) -> Callable[[], Any]:
        return quiet(
            lambda: OcclusionSensitivity(batch_size=32).explain(
                (x, None), bundle.model, target, patch
            )
        )

    traces: dict[str, float] = {}

    def warm_up(patch: int, stride: int) -> None:
        """Trace every compiled function of this geometry and execute it once per batch size it
        will meet (oneDNN builds its kernels per shape on first execution: seconds)."""
        corners = corners_of(224, patch, stride)
        sizes = sorted({part.stop - part.start for part in chunks(len(corners), full_batch)})
        for size in sizes:
            bundle.runner.built_forward(
                occluded_inputs,
                (corners[:size],),
                (tf.constant(x[0]), tf.constant(fill), tf.constant([patch, patch], tf.int32)),
                batch_size=size,
            )
        for threshold in (None, *thresholds):
            started = time.perf_counter()
            plan = incremental.plan_for(
                bundle, incremental.Geometry(shape, (patch, patch), corners), threshold
            )
            caches = plan.prepare(x)
            function = plan._batch_fn()
            offsets = plan.offsets
            for part in {p.stop - p.start for p in chunks(len(corners), inc_batch)}:
                function(tf.constant(corners[:part]), tf.constant(offsets[:part]), fill_t, caches)
            traces[f"{patch}/{stride}/{threshold}"] = time.perf_counter() - started
        if stride == patch:
            tf_explain(patch)()

    for patch, stride in geometries:
        print(
            f"{name} patch {patch} stride {stride}: warming up (load {load_average()})", flush=True
        )
        warm_up(patch, stride)
        candidates: dict[str, Callable[[], Any]] = {
            "full": ours("full", patch, stride),
            "incremental": ours("incremental", patch, stride),
        }
        for threshold in thresholds:
            candidates[f"approximate {threshold:g}"] = ours("approximate", patch, stride, threshold)
        if stride == patch:
            candidates["tf-explain"] = tf_explain(patch)
        print(
            f"{name} patch {patch} stride {stride}: {len(candidates)} candidates × {rounds} "
            f"rounds (load {load_average()})",
            flush=True,
        )
        summary, last = measure(candidates, rounds)
        full_map = last["full"].model_attribution
        exact_map = last["incremental"].model_attribution
        scale = float(np.abs(full_map).max()) or 1.0
        for candidate, timing in summary.items():
            row: dict[str, Any] = {
                "model": name,
                "patch": patch,
                "stride": stride,
                "patches": len(corners_of(224, patch, stride)),
                "candidate": candidate,
                **timing,
                "speedup_wall": summary["full"]["wall_s"] / timing["wall_s"],
                "speedup_cpu": summary["full"]["cpu_s"] / timing["cpu_s"],
            }
            result = last[candidate]
            if candidate != "tf-explain":
                row["mode_ran"] = result.extras["occlusion_mode"]
                row["flops_ratio"] = result.extras.get("incremental_flops_ratio", 1.0)
            if candidate == "incremental":
                row["max_error_vs_full"] = float(np.abs(exact_map - full_map).max()) / scale
            if candidate.startswith("approximate"):
                approx = result.model_attribution
                row["threshold"] = float(candidate.split()[1])
                row["pearson_vs_exact"] = float(
                    np.corrcoef(approx.ravel(), exact_map.ravel())[0, 1]
                )
                row["top10_overlap_vs_exact"] = top_overlap(approx, exact_map)
            if candidate in ("incremental", *(f"approximate {t:g}" for t in thresholds)):
                # planning, tracing and first executions: what a new geometry costs once
                row["first_call_extra_s"] = traces[f"{patch}/{stride}/{row.get('threshold')}"]
            rows.append(row)
            print(
                f"  {candidate:16s} wall {timing['wall_s']:7.2f} s  cpu {timing['cpu_s']:7.2f} s  "
                f"×{row['speedup_wall']:.2f} wall, ×{row['speedup_cpu']:.2f} cpu",
                flush=True,
            )
    geometry = incremental.Geometry(shape, (16, 16), corners_of(224, 16, 16))
    plan = incremental.plan_for(bundle, geometry)
    profile = profile_shares(plan, x, fill, batch=32)
    return {
        "model": name,
        "target": target,
        "full_macs_per_image": plan.full_macs,
        "batch_sizes": {"full": full_batch, "incremental": inc_batch},
        "profile_patch16": profile,
        "rows": rows,
    }


def markdown(payload: dict[str, Any]) -> str:
    lines = [
        SECTION,
        "",
        f"`python benchmarks/bench_occlusion.py` ({payload['date']}, {payload['minutes']:.0f} min; "
        f"load {payload['load_start']} at start, {payload['load_end']} at end). Machine: "
        f"{payload['machine']}.",
        "",
        'Krypton-style incremental inference for occlusion (`mode="incremental"`, exact; '
        '`"approximate"`, projective field capped at τ of each map\'s side) against the full-pass '
        'path (`mode="full"`) and tf-explain, on 224-px `keras.applications` models with random '
        "weights (BatchNormalization statistics set from the image), the cat photo, the logit "
        "explained, automatic batch sizes (tf-explain: 32). Medians of "
        f"{payload['rounds']} interleaved warm rounds after tracing; speed-up = full / candidate "
        "in the same rounds, by wall time and by process CPU time (the steadier on this shared "
        "machine). FLOPs ratio: multiply-adds recomputed per patch / a full pass's. Error of an "
        "approximate map against the exact one: Pearson r and overlap of the top 10 % pixels; "
        "exact: max |incremental − full| / max |full|.",
        "",
        "| model | patch / stride | patches | candidate | wall s | CPU s | speed-up wall | "
        "speed-up CPU | FLOPs ratio | error |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model in payload["models"]:
        for row in model["rows"]:
            if "pearson_vs_exact" in row:
                error = (
                    f"r = {row['pearson_vs_exact']:.3f}, top-10 % "
                    f"{row['top10_overlap_vs_exact']:.0%}"
                )
            elif "max_error_vs_full" in row:
                error = f"{row['max_error_vs_full']:.1e}"
            else:
                error = "—"
            ratio = f"{row['flops_ratio']:.3f}" if "flops_ratio" in row else "—"
            lines.append(
                f"| {row['model']} | {row['patch']} / {row['stride']} | {row['patches']} | "
                f"{row['candidate']} | {row['wall_s']:.2f} | {row['cpu_s']:.2f} | "
                f"×{row['speedup_wall']:.2f} | ×{row['speedup_cpu']:.2f} | {ratio} | {error} |"
            )
    lines += ["", "Where the exact incremental pass spends its time (patch 16, stride 16, one "]
    lines[-1] += "profiled batch of 32; op-time shares):"
    lines.append("")
    for model in payload["models"]:
        profile = model["profile_patch16"]
        shares = ", ".join(f"{k} {v:.0%}" for k, v in profile["op_time_shares"].items())
        lines.append(
            f"- {model['model']}: {shares}. From `{profile['first_whole_map_layer']}` on, the "
            "projective field covers the whole map: those layers hold "
            f"{profile['whole_map_layers_share_of_full_macs']:.0%} of a full pass's "
            f"multiply-adds and {profile['whole_map_layers_share_of_incremental_macs']:.0%} of "
            "the incremental pass's."
        )
    if payload.get("notes"):
        lines += ["", payload["notes"]]
    return "\n".join(lines) + "\n"


def put_section(results: Path, section: str) -> None:
    """Replace this benchmark's section in RESULTS.md (up to the next "## "), or append it."""
    text = results.read_text() if results.exists() else ""
    start = text.find(SECTION)
    if start < 0:
        text = text.rstrip() + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(SECTION))
        text = text[:start] + section + (text[end + 1 :] if end >= 0 else "")
    results.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--rounds", type=int, default=2, help="warm rounds per geometry")
    parser.add_argument(
        "--thresholds", default=",".join(f"{t:g}" for t in THRESHOLDS), help="approximate τs"
    )
    parser.add_argument(
        "--geometries",
        default=",".join(f"{p}/{s}" for p, s in GEOMETRIES),
        help="patch/stride pairs at 224 px",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/occlusion.json")
    parser.add_argument("--results", type=Path, default=None, help="also update RESULTS.md")
    parser.add_argument("--notes", type=Path, default=None, help="markdown appended to the section")
    parser.add_argument(
        "--render", action="store_true", help="only re-render the section from --out (new notes)"
    )
    args = parser.parse_args()
    if args.render:
        payload = json.loads(args.out.read_text())
        payload["notes"] = args.notes.read_text() if args.notes else payload.get("notes", "")
        args.out.write_text(json.dumps(payload, indent=1, default=float) + "\n")
        write(payload, args.out, args.results)
        return
    thresholds = tuple(float(t) for t in args.thresholds.split(",") if t)
    geometries = tuple(
        (int(p), int(s)) for p, s in (g.split("/") for g in args.geometries.split(",") if g)
    )
    started = time.perf_counter()
    load_start = load_average()
    models = [
        bench_model(name, args.rounds, thresholds, geometries) for name in args.models.split(",")
    ]
    payload = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_line(),
        "command": " ".join(["python", *sys.argv]),
        "rounds": args.rounds,
        "thresholds": thresholds,
        "load_start": load_start,
        "load_end": load_average(),
        "minutes": (time.perf_counter() - started) / 60,
        "models": models,
        "notes": args.notes.read_text() if args.notes else "",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1, default=float) + "\n")
    write(payload, args.out, args.results)


def write(payload: dict[str, Any], out: Path, results: Path | None) -> None:
    section = markdown(payload)
    out.with_suffix(".md").write_text(section)
    if results is not None:
        put_section(results, section)
    print(section)


if __name__ == "__main__":
    main()
