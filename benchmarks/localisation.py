"""Localisation of every method on the honest demo model, against the generated object masks.

    python benchmarks/localisation.py [--n 100] [--out benchmarks/LOCALISATION.md]

For each method: pointing-game hit rate (the map's maximum lies on the object) and the share of
positive attribution that lies on the object (energy in mask), on fresh generated images the model
never saw. Chance level for the energy share is the object's area fraction, reported alongside.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import explainers  # noqa: E402
from explainers.evaluation.metrics import energy_in_mask, pointing_game  # noqa: E402
from explainers.io.demo_data import generate_dataset  # noqa: E402

# The pointing game's tolerance (Zhang et al. 2018): 15 px at 224 px, scaled to the 96-px images.
TOLERANCE = round(15 * 96 / 224)
# Lighter settings for the slow methods, so the whole table takes minutes, not hours.
PARAMS = {"smoothgrad": {"n_samples": 10}, "integrated_gradients": {"steps": 16}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=100, help="fresh images per method")
    parser.add_argument("--seed", type=int, default=777_001)
    parser.add_argument("--out", type=Path, default=None, help="also write a markdown table")
    args = parser.parse_args()
    bundle = explainers.load_model(
        ROOT / "assets/models/demo_shapes.keras", labels=ROOT / "assets/models/demo_labels.txt"
    )
    data = generate_dataset(args.n, args.seed, variant="honest")
    area = float(data["masks"].mean())
    rows = []
    for info in explainers.available_methods(bundle):
        hits, loose, energy, seconds = [], [], [], []
        for image, mask, label in zip(data["images"], data["masks"], data["labels"], strict=True):
            started = time.perf_counter()
            result = explainers.explain(
                bundle, image, info.name, target=int(label), **PARAMS.get(info.name, {})
            )
            seconds.append(time.perf_counter() - started)
            hits.append(pointing_game(result.attribution, mask))
            loose.append(pointing_game(result.attribution, mask, tolerance=TOLERANCE))
            energy.append(energy_in_mask(result.attribution, mask))
        rows.append(
            (info.name, np.mean(hits), np.mean(loose), np.mean(energy), np.median(seconds) * 1000)
        )
        print(
            f"{info.name:22s} pointing {rows[-1][1]:.3f} (±{TOLERANCE} px {rows[-1][2]:.3f})  "
            f"energy {rows[-1][3]:.3f}  median {rows[-1][4]:.0f} ms",
            flush=True,
        )
    lines = [
        f"Honest demo model, {args.n} fresh generated images (seed {args.seed}), target = true "
        f"class. Object area (chance level for energy): {area:.3f}.",
        "",
        f"| method | pointing, strict | pointing ±{TOLERANCE} px | energy in mask | median ms |",
        "|---|---|---|---|---|",
        *(f"| {n} | {h:.3f} | {lo:.3f} | {e:.3f} | {t:.0f} |" for n, h, lo, e, t in rows),
    ]
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
