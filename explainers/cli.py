"""Command line: ``python -m explainers methods``, ``python -m explainers explain ...`` and
``python -m explainers audit ...``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from explainers.errors import ExplainerError, ParameterError
from explainers.io.model_files import TASK_CHOICES
from explainers.targets import SYNTAX

from . import render


def _methods(args: argparse.Namespace) -> int:
    from explainers.registry import available_methods

    infos = available_methods()
    if args.json:
        payload = [
            {
                "name": m.name,
                "label": m.label,
                "family": m.family,
                "description": m.description,
                "reference": m.reference,
                "cost": m.cost,
                "engines": list(m.engines),
                "uses_layer": m.uses_layer,
                "params": [
                    {
                        "name": p.name,
                        "kind": p.kind,
                        "default": p.default,
                        "low": p.low,
                        "high": p.high,
                        "choices": list(p.choices) if p.choices else None,
                        "help": p.help,
                    }
                    for p in m.params
                ],
            }
            for m in infos
        ]
        print(json.dumps(payload, indent=2))
        return 0
    for m in infos:
        print(f"{m.name}  [{m.family}]  {m.label} — {m.description}")
        print(f"    cost: {m.cost}; engines: {', '.join(m.engines)}")
        for p in m.params:
            if p.choices:
                allowed = "one of " + ", ".join(map(str, p.choices))
            else:
                allowed = f"{_number(p.low)}..{_number(p.high)}" if p.low is not None else p.kind
            print(f"    --param {p.name}={p.default}  ({allowed}) {p.help}")
    return 0


def _number(value: float | None) -> str:
    """A bound as the user types it: 2147483647, not 2.14748e+09; 0.5 stays 0.5."""
    if value is None:
        return "none"
    number = float(value)
    return str(int(number)) if number.is_integer() and abs(number) < 1e16 else f"{number:g}"


def _parse_params(items: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ParameterError(f"--param expects name=value, got {item!r}")
        name, value = item.split("=", 1)
        params[name.strip()] = value.strip()
    return params


def _explain(args: argparse.Namespace) -> int:
    from explainers.explanation import explain
    from explainers.io.images import load_image
    from explainers.io.models import load_model
    from explainers.registry import get_method

    if not args.out and not args.npy:
        raise ParameterError("give --out heat.png and/or --npy raw.npy")
    spec = get_method(args.method)
    raw_params = _parse_params(args.param or [])
    params = {name: spec.param(name).coerce(value) for name, value in raw_params.items()}
    bundle = load_model(
        args.model, preprocessing=args.preprocessing, labels=args.labels, task=args.task
    )
    image = load_image(args.image)
    result = explain(
        bundle,
        image,
        args.method,
        target=args.target,
        layer=args.layer,
        engine=args.engine,
        **params,
    )
    if args.out:
        rgb = render.overlay(
            image, result.attribution, sign=args.sign, alpha=args.alpha, colormap=args.colormap
        )
        Path(args.out).write_bytes(render.to_png(rgb))
    if args.npy:
        np.save(args.npy, result.attribution)
    summary = {
        "model": bundle.source,
        "model_sha256": bundle.sha256,
        "method": result.method,
        "engine": result.engine,
        "params": result.params,
        "target": result.target,
        "label": result.label,
        "score": result.score,
        "layer": result.layer,
        "seconds": round(result.seconds, 4),
        "shape": list(result.attribution.shape),
        "min": float(result.attribution.min()),
        "max": float(result.attribution.max()),
        "extras": {k: v for k, v in result.extras.items() if k != "region"},
        "out": args.out,
        "npy": args.npy,
    }
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print(
            f"{result.method}: {result.extras['target']['text'] or result.label} "
            f"(index {result.target}, {result.extras['magnitude']['score_text']}) "
            f"in {result.seconds:.2f}s → {args.out or ''} {args.npy or ''}".rstrip()
        )
    return 0


def _audit_data(text: str) -> Any:
    """``--data``: an image folder, a .csv/.parquet manifest, or ``demo:NAME[:N[:SEED]]``."""
    from explainers import audit

    if not text.startswith("demo:"):
        return text
    parts = text.split(":")[1:]
    if not parts or parts[0] not in audit.DEMO_DATASETS or len(parts) > 3:
        raise ParameterError(
            f"--data {text!r}: expected demo:NAME[:N[:SEED]] with NAME one of "
            f"{', '.join(audit.DEMO_DATASETS)}"
        )
    try:
        n = int(parts[1]) if len(parts) > 1 else 200
        seed = int(parts[2]) if len(parts) > 2 else 0
    except ValueError:
        raise ParameterError(f"--data {text!r}: N and SEED must be whole numbers") from None
    return audit.demo_dataset(parts[0], n=n, seed=seed)


def _audit(args: argparse.Namespace) -> int:
    from explainers import audit

    if args.report is not None:
        return _audit_report(args)
    missing = [flag for flag in ("model", "data", "out") if getattr(args, flag) is None]
    if missing:
        raise ParameterError(
            f"audit needs {', '.join('--' + m for m in missing)} to compute a run "
            "(or --report RUN to write the report of an existing run)"
        )
    methods = _method_list(args.methods) or ["grad_cam"]
    width = 40

    def progress(fraction: float, message: str) -> None:
        filled = round(fraction * width)
        bar = "█" * filled + "·" * (width - filled)
        print(f"\r[{bar}] {fraction:6.1%} {message}"[:160].ljust(160), end="", file=sys.stderr)

    data = _audit_data(args.data)  # a wrong --data is refused before TensorFlow loads
    summary = audit.run_audit(
        args.model,
        data,
        args.out,
        methods=methods,
        map_size=args.map_size,
        chunk_size=args.chunk_size,
        progress=None if args.quiet else progress,
        labels=args.labels,
        engine=args.engine,
        address=args.address,
        batch_size=args.batch_size,
        actors=args.actors,
        cpus_per_actor=args.cpus_per_actor,
    )
    if not args.quiet:
        print(file=sys.stderr)
    accuracy = f"{summary.accuracy:.1%}" if summary.accuracy is not None else "n/a (no labels)"
    lines = [
        f"{summary.done}/{summary.total} images in {args.out} "
        f"({summary.computed} computed now, {summary.resumed_from} already done; "
        f"{summary.images_per_second:.1f} images/s)",
        f"errors: {summary.errors} · accuracy: {accuracy}",
    ]
    review = audit.analyse_run(args.out, methods[0]) if summary.done else None
    if review is not None:
        lines.append(f"flags ({methods[0]}): {len(review.flags)}")
        lines += [f"  - [{flag.kind}] {flag.evidence}" for flag in review.flags[: args.flags]]
        if len(review.flags) > args.flags:
            lines.append(f"  … {len(review.flags) - args.flags} more (--flags N shows more)")
    if args.html and summary.done:
        path = audit.write_report(args.out, args.html, methods[0], examples=args.examples)
        lines.append(f"report: {path}")
    print("\n".join(lines))
    return 0 if summary.complete else 1


def _method_list(text: str | None) -> list[str]:
    return [m.strip() for m in (text or "").split(",") if m.strip()]


def _audit_report(args: argparse.Namespace) -> int:
    """``audit --report RUN``: the HTML report of an existing run, nothing recomputed."""
    from explainers import audit

    given = [flag for flag in ("model", "data", "out") if getattr(args, flag) is not None]
    if given:
        raise ParameterError(
            f"--report writes the report of an existing run without computing; leave out "
            f"{', '.join('--' + g for g in given)}"
        )
    methods = _method_list(args.methods)
    if len(methods) > 1:
        raise ParameterError(
            f"--report shows one method's maps; give one of {', '.join(methods)} to --methods"
        )
    path = audit.write_report(
        args.report, args.html, methods[0] if methods else None, examples=args.examples
    )
    print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m explainers", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    methods = sub.add_parser("methods", help="list the methods and their parameters")
    methods.add_argument("--json", action="store_true", help="machine-readable output")
    methods.set_defaults(run=_methods)
    ex = sub.add_parser("explain", help="explain one image")
    ex.add_argument("--model", required=True, help=".keras / .h5 model file")
    ex.add_argument("--image", required=True, help="image file")
    ex.add_argument("--method", required=True, help="method name (see `methods`)")
    ex.add_argument(
        "--target",
        default=None,
        help=f"what to explain (default: the top class): {SYNTAX}",
    )
    ex.add_argument(
        "--task",
        default="auto",
        choices=TASK_CHOICES,
        help="what the model's output does (default: recognised; 'regression' for a linear "
        "output saved without its loss)",
    )
    ex.add_argument("--layer", default=None, help="layer for CAM methods (default: automatic)")
    ex.add_argument("--engine", default="native", choices=("native", "tf_explain"))
    ex.add_argument("--param", action="append", metavar="NAME=VALUE", help="method parameter")
    ex.add_argument("--preprocessing", default="auto")
    ex.add_argument("--labels", default=None, help="labels file (txt or JSON)")
    ex.add_argument("--out", default=None, help="overlay PNG to write")
    ex.add_argument("--npy", default=None, help="raw float32 map (.npy) to write")
    ex.add_argument("--sign", default="positive", choices=render.SIGNS)
    ex.add_argument("--colormap", default=None, choices=render.COLORMAPS)
    ex.add_argument("--alpha", type=float, default=0.5, help="overlay opacity 0..1")
    ex.add_argument("--json", action="store_true", help="print the summary as JSON")
    ex.set_defaults(run=_explain)
    au = sub.add_parser(
        "audit",
        help="explain a whole dataset into a run folder (resumable), then cluster and flag",
    )
    au.add_argument("--model", default=None, help=".keras / .h5 model file")
    au.add_argument(
        "--data",
        default=None,
        help="image folder (one sub-folder per class), .csv/.parquet manifest "
        "(path,label[,mask_path]) or demo:NAME[:N[:SEED]] (honest, shortcut_half)",
    )
    au.add_argument("--out", default=None, help="run folder (an existing run resumes)")
    au.add_argument(
        "--methods",
        default=None,
        help="comma-separated method names (default grad_cam; with --report: the one method "
        "to show, default the run's first)",
    )
    au.add_argument("--labels", default=None, help="labels file (txt or JSON)")
    au.add_argument("--map-size", type=int, default=32, help="stored map side (cells)")
    au.add_argument("--chunk-size", type=int, default=64, help="images per commit")
    au.add_argument(
        "--engine",
        default="local",
        choices=("local", "ray"),
        help="where the images are computed: this process (local) or Ray Data actors (ray; "
        "needs ray[data]); the run folder is the same",
    )
    au.add_argument(
        "--address",
        default=None,
        help="with --engine ray: the Ray cluster to join (the address `ray start --head` "
        "prints, or auto); default: a new local Ray",
    )
    au.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="images per batched model pass (default: automatic; speed and memory only)",
    )
    au.add_argument(
        "--actors", type=int, default=None, help="with --engine ray: model actors (default: CPUs)"
    )
    au.add_argument(
        "--cpus-per-actor",
        type=float,
        default=1.0,
        help="with --engine ray: CPUs (TensorFlow threads) each actor reserves",
    )
    au.add_argument("--flags", type=int, default=10, help="flags to print")
    au.add_argument("--quiet", action="store_true", help="no progress bar")
    au.add_argument(
        "--report",
        metavar="RUN",
        default=None,
        help="write the self-contained HTML report of the existing run in RUN (no computing: "
        "--model, --data and --out are not used)",
    )
    au.add_argument(
        "--html",
        metavar="OUT.html",
        default=None,
        help="where the report goes (default RUN/report.html); with a computing run, write "
        "the report there after the run",
    )
    au.add_argument("--examples", type=int, default=6, help="example images per cluster")
    au.set_defaults(run=_audit)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except ExplainerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
