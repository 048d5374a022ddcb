"""The audit's HTML report (``explainers.audit.report``, ``python -m explainers audit --report``):
one self-contained page — no external resource, every picture a ``data:`` PNG — whose provenance,
accuracy table and confusion matrix are the run's, with every flag's evidence, example thumbnails
re-read from the dataset, failed images listed with their error, and a note where an image cannot
be read any more. One small run (48 demo images) is built once for the module."""

from __future__ import annotations

import base64
import html
import io
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from explainers import audit
from explainers.audit.report import FLAG_MEANINGS, THUMBNAIL
from explainers.errors import ParameterError

from .bad_images import BY_ID
from .conftest import DEMO_LABELS, ROOT, SHORTCUT_MODEL

N_IMAGES = 48


class Page(HTMLParser):
    """What a test reads from a report: the images' sources and alt texts, and the tables by class
    (rows of cell texts)."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.images: list[dict[str, str]] = []
        self.tables: list[tuple[str, list[list[str]]]] = []
        self.tags: set[str] = set()
        self._cell: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        attributes = {k: v or "" for k, v in attrs}
        self.tags.add(tag)
        if tag == "img":
            self.images.append(attributes)
        elif tag == "table":
            self.tables.append((attributes.get("class", ""), []))
        elif tag == "tr":
            self.tables[-1][1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def table(self, cls: str) -> list[list[str]]:
        found = [rows for classes, rows in self.tables if cls in classes.split()]
        assert len(found) == 1, f"{len(found)} tables of class {cls!r}"
        return found[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "run"
    dataset = audit.demo_dataset("shortcut_half", n=N_IMAGES, seed=3)
    summary = audit.run_audit(SHORTCUT_MODEL, dataset, out, labels=DEMO_LABELS, chunk_size=16)
    assert summary.complete and summary.errors == 0
    return out


@pytest.fixture(scope="module")
def page(run_dir):
    return audit.audit_report(run_dir)


@pytest.fixture(scope="module")
def parsed(page):
    return Page(page)


@pytest.fixture(scope="module")
def review(run_dir):
    return audit.analyse_run(run_dir, "grad_cam")


def test_the_page_parses_and_is_self_contained(page, parsed):
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "http://" not in page and "https://" not in page
    assert not {"script", "link", "iframe", "object", "embed"} & parsed.tags
    assert re.search(r"\b(src|href)=[\"'](?!data:image/png;base64,|#)", page) is None
    assert len(parsed.images) > 20
    for image in parsed.images:
        assert image["src"].startswith("data:image/png;base64,")
        picture = Image.open(io.BytesIO(base64.b64decode(image["src"].split(",", 1)[1])))
        assert picture.format == "PNG" and max(picture.size) <= THUMBNAIL  # thumbnails only
        assert image.get("alt")
    assert len(page) < 3_000_000


def test_the_provenance_is_the_manifests(page, run_dir):
    run = audit.open_run(run_dir)
    manifest = run.manifest
    assert manifest["model"]["sha256"] in page
    assert manifest["dataset"]["fingerprint"] in page
    assert "demo_shortcut.keras" in page and html.escape(manifest["dataset"]["source"]) in page
    assert html.escape('{"relu": true}') in page  # grad_cam's resolved parameters
    assert manifest["created"] in page and manifest["versions"]["tensorflow"] in page
    assert f"{N_IMAGES} of {N_IMAGES}" in page
    assert "Lapuschkin" in page and "Nature Communications" in page
    for kind in FLAG_MEANINGS:
        assert kind in page


def test_per_class_accuracy_and_the_confusion_matrix_are_the_tables(parsed, run_dir):
    run = audit.open_run(run_dir)
    rows = run.table.to_pylist()
    names = run.manifest["model"]["class_names"]
    accuracy = {row[0]: row[1:] for row in parsed.table("accuracy")[1:]}
    for c, name in enumerate(names):
        mine = [r for r in rows if r["label"] == c and r["prediction"] is not None]
        correct = sum(r["correct"] for r in mine)
        assert accuracy[name][:3] == [str(len(mine)), str(correct), f"{correct / len(mine):.1%}"]
    labelled = [r for r in rows if r["label"] is not None and r["prediction"] is not None]
    total = sum(r["correct"] for r in labelled)
    share = f"{total / len(labelled):.1%}"
    assert accuracy["all classes"][:3] == [str(len(labelled)), str(total), share]

    matrix = parsed.table("confusion")
    assert matrix[0][1:] == names  # columns: predictions
    assert [row[0] for row in matrix[1:]] == names  # rows: labels
    cells = np.array([[int(v) for v in row[1:]] for row in matrix[1:]])
    assert cells.sum() == len(labelled) == N_IMAGES
    for r in labelled:
        cells[r["label"], r["prediction"]] -= 1
    assert not cells.any()


def test_every_flag_is_there_with_its_evidence_and_examples(page, review):
    assert any(flag.kind == "fixed_location" for flag in review.flags)  # the shortcut is found
    for flag in review.flags:
        assert html.escape(flag.evidence) in page
    assert f"Flags ({len(review.flags)})" in page
    flags = page[page.index("<h2>Flags") :]
    cards = flags.split("<div class='card flag'>")[1:]
    assert cards and all('alt="image ' in card for card in cards)


def test_clusters_and_mean_maps_have_their_pictures(page, review):
    for name in review.class_names:
        assert f'alt="mean map of {html.escape(name)}"' in page
    cards = page.split("<div class='card cluster'")[1:]
    expected = [
        min(6, int(size)) for c in sorted(review.classes) for size in review.classes[c].spray.sizes
    ]
    assert len(cards) == len(expected) > 0
    for card, count in zip(cards, expected, strict=True):
        card = card.split("<div class='card")[0].split("<h3>")[0]
        assert card.count('alt="mean map of cluster') == 1
        assert card.count('alt="image ') == count
        assert "map only" not in card  # every demo image was regenerated


def test_an_unknown_method_is_refused(run_dir):
    with pytest.raises(ParameterError, match="no 'occlusion' maps"):
        audit.audit_report(run_dir, "occlusion")


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """11 circles and one corrupt file, as an image folder, run with the shortcut model."""
    root = tmp_path_factory.mktemp("folder")
    images = root / "images" / "circle"
    images.mkdir(parents=True)
    demo = audit.demo_dataset("honest", n=44, seed=1)
    circles = [item for item in demo if item.label == 0][:11]
    for item in circles:
        Image.fromarray(demo.read_item(item)[0]).save(images / f"c{item.index:02d}.png")
    (images / "corrupt.png").write_bytes(BY_ID["corrupt_png"].build())
    out = root / "run"
    summary = audit.run_audit(SHORTCUT_MODEL, root / "images", out, labels=DEMO_LABELS)
    assert summary.complete and summary.errors == 1
    return out


def test_a_failed_image_is_listed_with_its_error(folder_run):
    page = audit.audit_report(folder_run, examples=12)
    run = audit.open_run(folder_run)
    (error,) = [e for e in run.table.column("error").to_pylist() if e]
    assert BY_ID["corrupt_png"].refused in error
    assert html.escape(error) in page and "circle/corrupt.png" in page
    assert "Images failed</th><td>1<" in page
    assert "map only" not in page


def test_an_image_that_cannot_be_read_any_more_shows_its_map_with_a_note(folder_run, tmp_path):
    run = audit.open_run(folder_run)
    rows = [r for r in run.table.to_pylist() if r["error"] is None]
    gone, changed = Path(rows[0]["path"]), Path(rows[1]["path"])
    kept = {path: tmp_path / path.name for path in (gone, changed)}
    for path, copy in kept.items():
        path.rename(copy)  # the folder's files go away or change, and come back after
    Image.new("RGB", (40, 30)).save(changed)
    try:
        page = audit.audit_report(folder_run, examples=12)  # every image of the cluster
    finally:
        for path, copy in kept.items():
            copy.replace(path)
    assert "map only: the image cannot be read any more: No image file at" in page
    assert "map only: the file is now 40×30 px, not the 96×96 px of the run" in page


def test_the_cli_writes_the_report_and_prints_its_path(folder_run, tmp_path, capsys):
    from explainers.cli import main

    out = tmp_path / "audit.html"
    assert main(["audit", "--report", str(folder_run), "--html", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    text = out.read_text(encoding="utf-8")
    assert audit.open_run(folder_run).manifest["model"]["sha256"] in text
    # Default: RUN/report.html.
    assert main(["audit", "--report", str(folder_run), "--methods", "grad_cam"]) == 0
    assert capsys.readouterr().out.strip() == str(folder_run / "report.html")
    assert (folder_run / "report.html").stat().st_size > 1000


def test_the_cli_refuses_a_folder_without_a_run_and_missing_arguments(tmp_path, capsys):
    from explainers.cli import main

    assert main(["audit", "--report", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "no audit run" in error and str(tmp_path) in error
    assert len(error.strip().splitlines()) == 1
    assert main(["audit", "--data", "demo:honest:4"]) == 2
    error = capsys.readouterr().err.strip()
    assert "--model" in error and "--out" in error and "--report" in error
    assert len(error.splitlines()) == 1
    assert main(["audit", "--report", str(tmp_path), "--model", "m.keras"]) == 2
    assert "leave out --model" in capsys.readouterr().err


def test_the_report_needs_no_tensorflow():
    code = (
        "import sys, explainers.audit.report, explainers.cli; "
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_unlabelled_images_grouped_by_prediction_are_never_mistakes():
    # What the report of an unlabelled dataset relies on (it groups the maps by prediction).
    from explainers.audit.analysis import analyse

    maps = np.random.default_rng(0).random((12, 8, 8))
    labels = np.array([-1] * 10 + [1, 0])
    review = analyse(
        maps,
        labels,
        np.zeros(12, int),
        np.full(12, 0.95),
        group_by="prediction",
        class_names=["a", "b"],
        embedding="spectral",
    )
    (wrong,) = review.flags_of(0, "misclassified")
    assert wrong.images.tolist() == [10] and wrong.values["of"] == 2
