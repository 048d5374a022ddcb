"""What ExplanationCallback costs per epoch while a model trains.

Trains the demo architecture (``assets/make_demo_models.build_model``, 96×96 inputs) on generated
shortcut images, from the same seed, once without the callback and once per callback setting, and
measures every epoch's wall time. The callback's own time per logged epoch is also measured
inside it (``ExplanationCallback.epoch_seconds``: explaining, TensorBoard images, run folder).

    python benchmarks/callback_overhead.py                 # markdown table on stdout
    python benchmarks/callback_overhead.py --json out.json

Epoch 0 of a callback run includes tracing the library's compiled passes (once per run); the
later epochs are the steady state.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "assets"))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from make_demo_models import BATCH_SIZE, build_model  # noqa: E402

from explainers.callbacks import ExplanationCallback  # noqa: E402
from explainers.io.demo_data import generate_dataset  # noqa: E402


class EpochTimer(keras.callbacks.Callback):
    """Wall time of every epoch, end of the previous epoch's callbacks to end of this one's."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):  # runs after the callbacks listed before it
        self.seconds.append(time.perf_counter() - self.started)


def train(data, epochs: int, callback: ExplanationCallback | None) -> list[float]:
    keras.utils.set_random_seed(0)
    model = build_model("bench")
    model.compile(
        keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    x = data["images"].astype(np.float32) / 255.0
    timer = EpochTimer()
    callbacks = [callback, timer] if callback is not None else [timer]
    model.fit(
        x, data["labels"], batch_size=BATCH_SIZE, epochs=epochs, verbose=0, callbacks=callbacks
    )
    return timer.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=1600, help="training images")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    data = generate_dataset(args.train, 2, variant="shortcut", shape_agreement=0.5)
    fixed = generate_dataset(8, 200, variant="shortcut", shape_agreement=0.5)
    masks = {"object": fixed["masks"], "marker": fixed["marker_masks"]}
    settings = {
        "no callback": None,
        "grad_cam, 8 images, run folder + TensorBoard": ("grad_cam",),
        "grad_cam + integrated_gradients (16 steps), 8 images": (
            "grad_cam",
            "integrated_gradients",
        ),
    }
    rows = []
    baseline = None
    for name, methods in settings.items():
        with tempfile.TemporaryDirectory() as folder:
            callback = None
            if methods is not None:
                callback = ExplanationCallback(
                    fixed["images"],
                    methods=methods,
                    labels=fixed["labels"],
                    masks=masks,
                    log_dir=Path(folder) / "logs",
                    run_dir=Path(folder) / "run",
                    preprocessing="0_1",
                    params={"integrated_gradients": {"steps": 16}} if len(methods) > 1 else None,
                )
            epochs = train(data, args.epochs, callback)
        steady = float(np.median(epochs[1:]))
        if baseline is None:
            baseline = steady
        inside = callback.epoch_seconds if callback is not None else []
        rows.append(
            {
                "setting": name,
                "epoch_seconds": [round(s, 3) for s in epochs],
                "steady_epoch_s": round(steady, 3),
                "callback_first_epoch_s": round(inside[0], 3) if inside else None,
                "callback_steady_s": round(float(np.median(inside[1:])), 3) if inside else None,
                "overhead_vs_no_callback": round(steady / baseline - 1, 4),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    steps = -(-int(args.train) // BATCH_SIZE)
    print()
    print(
        f"{args.train} training images ({steps} steps of {BATCH_SIZE}) per epoch, {args.epochs} "
        f"epochs, demo architecture (96×96); {os.cpu_count()} CPUs, {platform.processor() or ''} "
        f"TensorFlow {tf.__version__}, load average {os.getloadavg()[0]:.2f}"
    )
    print()
    print(
        "| setting | epoch (median of epochs 1+) | callback, epoch 0 (traces) | callback, later "
        "epochs | overhead |"
    )
    print("|---|---|---|---|---|")
    for row in rows:
        first = (
            "—"
            if row["callback_first_epoch_s"] is None
            else f"{row['callback_first_epoch_s']:.2f} s"
        )
        later = "—" if row["callback_steady_s"] is None else f"{row['callback_steady_s']:.2f} s"
        overhead = f"{100 * row['overhead_vs_no_callback']:+.1f} %" if row is not rows[0] else "—"
        print(
            f"| {row['setting']} | {row['steady_epoch_s']:.2f} s | {first} | {later} | {overhead} |"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
