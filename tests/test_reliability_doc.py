"""docs/RELIABILITY.md stays true: every case in the tests' data modules has a row there, and the
row states the outcome and the message the code really produces."""

from __future__ import annotations

from pathlib import Path

import pytest

import explainers

from . import bad_images, hostile_files
from .test_hostile_models import WAIVED_BY_TRUST

DOC = Path(__file__).resolve().parents[1] / "docs" / "RELIABILITY.md"
ELLIPSIS = "…"


def _section(title: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else None]


def _rows(title: str) -> dict[str, list[str]]:
    """Table rows of a section keyed by the case id in their first cell (`id`)."""
    rows: dict[str, list[str]] = {}
    for line in _section(title).splitlines():
        if not line.startswith("| `"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        case_id = cells[0].strip("`")
        assert case_id not in rows, f"{case_id} has two rows in {DOC.name}"
        rows[case_id] = cells
    return rows


def _assert_quoted_excerpt(cell: str, message: str, case_id: str) -> None:
    """The cell quotes the message, possibly shortened with '…': each piece must be in it."""
    assert cell.startswith('"') and cell.endswith('"'), f"{case_id}: message cell not quoted"
    pieces = [piece.strip() for piece in cell[1:-1].split(ELLIPSIS) if piece.strip()]
    assert pieces, f"{case_id}: empty message cell"
    for piece in pieces:
        assert piece.replace("\\|", "|") in message, (
            f"{case_id}: docs/RELIABILITY.md quotes {piece!r}, but the message is {message!r}"
        )


def test_required_sections_exist():
    text = DOC.read_text(encoding="utf-8")
    for title in ("Hostile model files", "Bad images", "Isolation", "Many users", "Memory"):
        assert f"\n## {title}\n" in text


def test_every_hostile_model_case_is_documented_as_observed(tmp_path_factory):
    rows = _rows("Hostile model files")
    known = {case.case_id for case in hostile_files.CASES}
    assert set(rows) == known, (
        f"missing from the doc: {sorted(known - set(rows))}; "
        f"not a test case: {sorted(set(rows) - known)}"
    )
    folder = tmp_path_factory.mktemp("doc_hostile")
    for case in hostile_files.CASES:
        tries, outcome, message_cell, trust = rows[case.case_id][1:5]
        assert tries == case.tries, f"{case.case_id}: 'what it tries' differs from the test data"
        path, marker = hostile_files.build(case, folder)
        with pytest.raises(explainers.ModelLoadError) as caught:
            explainers.load_model(path, **case.load_kwargs)
        observed = type(caught.value).__name__
        assert f"(`{observed}`)" in outcome, f"{case.case_id}: raised {observed}, doc: {outcome}"
        _assert_quoted_excerpt(message_cell, str(caught.value), case.case_id)
        expected_trust = "waived" if case.case_id in WAIVED_BY_TRUST else "still refused"
        assert trust.startswith(expected_trust), f"{case.case_id}: trust column says {trust!r}"
        assert not marker.exists()


def test_every_image_case_is_documented_as_observed():
    rows = _rows("Bad images")
    known = {case.case_id for case in bad_images.CASES}
    assert set(rows) == known, (
        f"missing from the doc: {sorted(known - set(rows))}; "
        f"not a test case: {sorted(set(rows) - known)}"
    )
    for case in bad_images.CASES:
        what, outcome, message_cell = rows[case.case_id][1:4]
        assert what == case.what, f"{case.case_id}: 'what it is' differs from the test data"
        try:
            explainers.load_image(case.build())
        except explainers.ImageError as error:
            assert outcome == "refused (`ImageError`)", f"{case.case_id}: refused, doc: {outcome}"
            _assert_quoted_excerpt(message_cell, str(error), case.case_id)
        else:
            assert outcome.startswith("loads"), f"{case.case_id}: loads, doc says {outcome!r}"
            assert message_cell == "—"
