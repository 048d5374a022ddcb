"""The Audit page: its helpers (what the web page may read, unpacking an uploaded zip safely, the
background tasks) and the page itself driven through ``AppTest`` on the shipped shortcut model
and a small generated dataset."""

from __future__ import annotations

import base64
import io
import json
import os
import stat
import struct
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from dashboard import audits, tasks
from dashboard.audits import AuditInputError, ZipLimits
from dashboard.pages import audit as audit_page

from .conftest import SHORTCUT_MODEL
from .dashboard_helpers import APP, png_bytes, sample_image

PNG = png_bytes(sample_image("circle", seed=0)[0])


def make_zip(entries: dict[str, bytes], *, links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return buffer.getvalue()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ------------------------------------------------------------------------------------------------
# Uploaded zips
# ------------------------------------------------------------------------------------------------
def test_a_zip_is_unpacked_with_its_non_images_skipped_and_counted(tmp_path):
    data = make_zip(
        {
            "shapes/circle/a.png": PNG,
            "shapes/circle/b.png": PNG,
            "shapes/square/c.PNG": PNG,
            "shapes/square/notes.txt": b"not an image",
            "shapes/labels.csv": b"path,label\n",
            "__MACOSX/shapes/._a.png": b"resource fork",
            "shapes/.DS_Store": b"x",
        },
        links={"shapes/circle/link.png": "/etc/passwd"},
    )
    unpacked = audits.extract_zip(data, tmp_path, ZipLimits(), name="shapes.zip")
    assert unpacked.images == 3
    assert unpacked.folder.name == "shapes"  # the wrapping folder is stepped into
    assert sorted(p.name for p in unpacked.folder.rglob("*") if p.is_file()) == [
        "a.png",
        "b.png",
        "c.PNG",
    ]
    reasons = sorted(reason for _, reason in unpacked.skipped)
    assert reasons == [
        "hidden or system files",
        "hidden or system files",
        "not images",
        "not images",
        "symbolic links",
    ]
    assert "2 not images (notes.txt, labels.csv)" in unpacked.skipped_summary()
    # The folder reads as a dataset with the two classes; the same bytes are not unpacked again.
    choice = audits.folder_choice(unpacked.folder, [tmp_path], label="zip-shapes")
    assert (choice.count, choice.class_names) == (3, ("circle", "square"))
    again = audits.extract_zip(data, tmp_path, ZipLimits(), name="shapes.zip")
    assert again == unpacked


@pytest.mark.parametrize(
    "name", ["../evil.png", "a/../../evil.png", "/tmp/evil.png", "C:/evil.png", "..\\evil.png"]
)
def test_a_zip_slip_entry_is_refused_and_nothing_is_written(tmp_path, name):
    parent = tmp_path / "uploads"
    parent.mkdir()
    data = make_zip({"ok/circle/a.png": PNG, name: PNG})
    with pytest.raises(AuditInputError, match=r"outside its folder|leaves its folder"):
        audits.extract_zip(data, parent, ZipLimits(), name="slip.zip")
    assert leftovers(parent) == []
    assert not (tmp_path / "evil.png").exists()


def test_a_decompression_bomb_is_refused_by_its_declared_size(tmp_path):
    data = make_zip({"bomb/circle/zeros.png": bytes(3 * 2**20)})
    assert len(data) < 20_000  # 3 MB of zeros compress to a few kB
    limits = ZipLimits(max_total_bytes=2**20)
    with pytest.raises(AuditInputError, match=r"would unpack to 3 MB.*at most 1 MB"):
        audits.extract_zip(data, tmp_path, limits, name="bomb.zip")
    assert leftovers(tmp_path) == []


def _understate_sizes(data: bytes, size: int) -> bytes:
    """The zip with every entry's declared uncompressed size replaced by ``size`` (local headers
    and central directory): an archive that lies about what it unpacks to."""
    out = bytearray(data)
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        start = 0
        while (found := out.find(signature, start)) >= 0:
            out[found + offset : found + offset + 4] = struct.pack("<I", size)
            start = found + 4
    return bytes(out)


def test_a_zip_that_understates_its_sizes_is_refused_while_unpacking(tmp_path):
    honest = make_zip({"lie/circle/a.png": PNG, "lie/circle/big.png": bytes(2**20)})
    lying = _understate_sizes(honest, 10)
    with zipfile.ZipFile(io.BytesIO(lying)) as archive:
        assert sum(i.file_size for i in archive.infolist()) == 20  # what it declares
    with pytest.raises(AuditInputError, match=r"more than it declares|damaged"):
        audits.extract_zip(lying, tmp_path, ZipLimits(max_total_bytes=2**20), name="lie.zip")
    assert leftovers(tmp_path) == []  # the partial folder is removed


def test_the_bytes_actually_written_are_counted(tmp_path, monkeypatch):
    """Even if a reader returned more than declared (zipfile stops at the declared size and
    checks the CRC), the count of written bytes stops the unpacking."""
    data = make_zip({"x/circle/a.png": bytes(5000), "x/circle/b.png": bytes(5000)})
    real_open = zipfile.ZipFile.open

    class Endless(io.RawIOBase):
        def readable(self):
            return True

        def readinto(self, buffer):
            buffer[: len(buffer)] = bytes(len(buffer))
            return len(buffer)

    def endless_open(self, info, *args, **kwargs):
        real_open(self, info, *args, **kwargs).close()
        return io.BufferedReader(Endless())

    monkeypatch.setattr(zipfile.ZipFile, "open", endless_open)
    with pytest.raises(AuditInputError, match="decompression bomb"):
        audits.extract_zip(data, tmp_path, ZipLimits(max_total_bytes=10**6), name="x.zip")
    assert leftovers(tmp_path) == []


def test_too_many_files_empty_and_non_zip_uploads_are_refused(tmp_path):
    many = make_zip({f"d/circle/{i}.png": PNG for i in range(5)})
    with pytest.raises(AuditInputError, match="holds 5 files; at most 4"):
        audits.extract_zip(many, tmp_path, ZipLimits(max_files=4), name="many.zip")
    with pytest.raises(AuditInputError, match="is empty"):
        audits.extract_zip(b"", tmp_path, ZipLimits(), name="empty.zip")
    with pytest.raises(AuditInputError, match="not a zip archive"):
        audits.extract_zip(b"PNG? no" * 10, tmp_path, ZipLimits(), name="photo.zip")
    with pytest.raises(AuditInputError, match="largest zip this page accepts is 1 kB"):
        audits.extract_zip(many, tmp_path, ZipLimits(max_zip_bytes=1024), name="big.zip")
    no_images = make_zip({"d/readme.md": b"# hi"})
    with pytest.raises(AuditInputError, match="holds no image files"):
        audits.extract_zip(no_images, tmp_path, ZipLimits(), name="docs.zip")
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------------
# The data root
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def data_root(tmp_path, monkeypatch):
    """A data root with one dataset (two class folders) and, outside it, a secret folder."""
    root = tmp_path / "data"
    for kind in ("circle", "square"):
        folder = root / "shapes" / kind
        folder.mkdir(parents=True)
        (folder / f"{kind}.png").write_bytes(PNG)
    secret = tmp_path / "secret"
    (secret / "circle").mkdir(parents=True)
    (secret / "circle" / "private.png").write_bytes(PNG)
    monkeypatch.setenv(audits.ENV_DATA_ROOT, str(root))
    return root, secret


def test_a_folder_resolves_only_inside_the_data_root(data_root):
    root, secret = data_root
    found, problem = audits.data_root()
    assert (found, problem) == (root.resolve(), None)
    assert audits.resolve_in_root(found, "shapes") == (root / "shapes").resolve()
    assert audits.resolve_in_root(found, " shapes/circle ") == (root / "shapes/circle").resolve()
    refused = {
        str(secret): "absolute path",
        "/etc": "absolute path",
        "~/x": "absolute path",
        "C:\\data": "absolute path",
        "../secret": "contains '..'",
        "shapes/../../secret": "contains '..'",
        "shapes\\..\\..\\secret": "contains '..'",
        "missing": "There is no folder",
        "": "Type or pick a folder",
    }
    for text, reason in refused.items():
        with pytest.raises(AuditInputError, match=reason):
            audits.resolve_in_root(found, text)
    # A symbolic link inside the root that points outside it.
    (root / "escape").symlink_to(secret, target_is_directory=True)
    with pytest.raises(AuditInputError, match="leads outside the data root"):
        audits.resolve_in_root(found, "escape")
    assert "escape" not in audits.dataset_candidates(found)
    assert audits.dataset_candidates(found) == ["shapes", "shapes/circle", "shapes/square"]


def test_a_dataset_whose_files_link_outside_the_root_is_refused(data_root):
    root, secret = data_root
    choice = audits.folder_choice(root / "shapes", [root], label="shapes")
    assert (choice.count, choice.class_names, choice.kind) == (2, ("circle", "square"), "folder")
    (root / "shapes" / "circle" / "stolen.png").symlink_to(secret / "circle" / "private.png")
    with pytest.raises(AuditInputError, match="1 file of this dataset lead outside"):
        audits.folder_choice(root / "shapes", [root], label="shapes-2")
    # A manifest naming a file outside the root, by a relative path with '..'.
    manifest = root / "list.csv"
    manifest.write_text(
        "path,label\nshapes/square/square.png,square\n../secret/circle/private.png,circle\n"
    )
    with pytest.raises(AuditInputError, match="lead outside"):
        audits.folder_choice(manifest, [root], label="list")
    # The worker checks again before it reads anything.
    with pytest.raises(AuditInputError, match="lead outside"):
        audits.open_spec({"kind": "files", "path": str(manifest), "roots": [str(root)]})
    with pytest.raises(AuditInputError, match="outside the folders this page may read"):
        audits.open_spec({"kind": "files", "path": str(secret), "roots": [str(root)]})


def test_an_unset_data_root_says_how_to_set_it(monkeypatch):
    monkeypatch.delenv(audits.ENV_DATA_ROOT, raising=False)
    root, problem = audits.data_root()
    assert root is None
    assert "EXPLAINER_DATA_ROOT=/srv/datasets streamlit run app.py" in problem
    monkeypatch.setenv(audits.ENV_DATA_ROOT, "/no/such/folder")
    root, problem = audits.data_root()
    assert root is None and "is not a folder on the server" in problem


def test_labels_must_match_the_models_classes_and_run_folders_are_stable(tmp_path):
    model = ("circle", "square", "triangle", "star")
    assert audits.label_problem(("circle", "star"), model) is None
    assert audits.label_problem(("0", "3"), model) is None  # class indices
    assert audits.label_problem(None, model) is None
    problem = audits.label_problem(("cat", "circle", "7"), model)
    assert problem.startswith("The dataset's classes 'cat', '7' are not among the model's")
    choice = audits.demo_choice("honest", 40, seed=3)
    assert (choice.count, choice.class_names, choice.has_marker_masks) == (40, model, False)
    folder = audits.run_folder(tmp_path, choice, ("abc", "0_1", None), "m.keras", ["grad_cam"], 32)
    assert folder.name.startswith("demo-honest-40-s3__m__grad_cam__")
    assert folder == audits.run_folder(
        tmp_path, choice, ("abc", "0_1", None), "m.keras", ["grad_cam"], 32
    )
    assert folder != audits.run_folder(
        tmp_path, choice, ("abc", "0_1", None), "m.keras", ["grad_cam"], 16
    )
    with pytest.raises(AuditInputError, match="1 to 20,000 images"):
        audits.demo_choice("honest", 0)


def test_a_chart_selection_maps_back_to_images_and_typical_maps_come_first():
    images = np.array([4, 9, 2, 7, 5])
    embedding = np.array([[0, 0], [1, 1], [2, 2], [3, 3], [1.5, 0.5]], np.float32)
    pick, box = audits.SCATTER_PICK, audits.SCATTER_BOX
    clicked = [
        {"index": 5},
        {"index": 4.0},  # JSON numbers may come back as floats
        {"index": 5},  # twice: once
        {"index": 3},  # not an image of the class
        {"index": True},
        {"index": "9"},
        {"other": 9},
        "9",
    ]
    assert audits.selected_images({pick: clicked}, images, embedding) == [5, 4]
    # A box: the points inside it in the class's order (bounds in either order), after the
    # clicked ones, each once.
    inside = {"x": [2.5, 0.9], "y": [0.4, 2.1]}
    assert audits.selected_images({box: inside}, images, embedding) == [9, 2, 5]
    both = {pick: [{"index": 2}, {"index": 4}], box: inside}
    assert audits.selected_images(both, images, embedding) == [2, 4, 9, 5]
    # Nothing selected, the empty state Streamlit starts with, and boxes that select nothing:
    # a click (no width), a missing axis, bounds that are not two finite numbers.
    assert audits.selected_images({}, images, embedding) == []
    assert audits.selected_images({pick: {}, box: {}}, images, embedding) == []
    clicked = {pick: [{"index": 7}]}
    for broken in (
        {"x": [1.0, 1.0], "y": [0, 3]},
        {"x": [0, 3]},
        {"x": [0, 3], "y": [0]},
        {"x": [0, 3], "y": [0, float("nan")]},
        {"x": [0, 3], "y": ["0", "3"]},
        [0, 3],
    ):
        assert audits.selected_images({**clicked, box: broken}, images, embedding) == [7], broken
    maps = np.zeros((4, 4, 4), np.float16)
    maps[0, 0, 0] = maps[1, 0, 0] = maps[2, 0, 0] = 1.0  # three maps alike
    maps[3, 3, 3] = 1.0  # one unlike them
    assert audits.typical_order(maps, np.array([3, 1, 0, 2])).tolist()[-1] == 3


def test_hover_pictures_show_the_image_and_its_map_in_a_few_kb_and_are_cached():
    """A point's hover picture: its image and, beside it, the image with its map over it (64 px
    high, a JPEG data URL of a few kB), built once per run version for at most ``limit`` points
    spread over the class, none for an image that cannot be read."""
    from types import SimpleNamespace

    from PIL import Image

    image = sample_image("circle", seed=0)[0]
    values = np.zeros((32, 32), np.float32)
    values[2:8, 2:8] = 1.0  # hot in the top left corner
    url = audits.hover_picture(image, values)
    head, _, data = url.partition(",")
    assert head == "data:image/jpeg;base64"
    assert len(url) < 8000
    picture = np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"), np.int64)
    assert picture.shape == (64, 130, 3)
    plain, overlaid = picture[:, :64], picture[:, 66:]
    # The left half is the image; the right one the same image, coloured where the map is hot.
    expected = np.asarray(audits.fit(image, 64), np.int64)
    assert np.corrcoef(plain.ravel(), expected.ravel())[0, 1] > 0.9
    hot, cold = overlaid[5:14, 5:14].mean(axis=(0, 1)), overlaid[40:, 40:].mean(axis=(0, 1))
    assert hot[0] > hot[2] + 40 and cold[2] > cold[0] + 40  # jet: red where hot, blue elsewhere

    reads: list[int] = []

    def read(index):
        reads.append(index)
        if index == 14:
            raise AuditInputError("gone")
        return image, None, None

    info = SimpleNamespace(path=Path("run"), version="v1")
    images = SimpleNamespace(read=read)
    maps = np.zeros((20, 32, 32), np.float32)
    members = [10, 11, 12, 13, 14, 15, 16]
    made = audits.hover_pictures(info, images, maps, members, "grad_cam", limit=4)
    assert reads == [10, 12, 14, 16]  # four spread over the class
    assert [p is not None for p in made] == [True, False, True, False, False, False, True]
    assert audits.hover_pictures(info, images, maps, members, "grad_cam", limit=4) is made
    assert reads == [10, 12, 14, 16]  # cached: nothing read again
    audits.hover_pictures(SimpleNamespace(path=Path("run"), version="v2"), images, maps, [11], "x")
    assert reads[-1] == 11  # another version of the run is built again


def test_accuracy_and_confusion_cover_the_classes_that_occur():
    from types import SimpleNamespace

    import pyarrow as pa

    run = SimpleNamespace(
        manifest={"model": {"class_names": ["a", "b", "c", "d"]}},
        table=pa.table(
            {
                "label": [0, 0, 2, None, 2, 0],
                "prediction": [0, 2, 2, 1, None, 0],  # None: the image failed
            }
        ),
    )
    assert audits.class_accuracy(run) == [
        {"Class": "a", "Images": 3, "Correct": 2, "Accuracy": 2 / 3, "Failed": 0},
        {"Class": "c", "Images": 1, "Correct": 1, "Accuracy": 1.0, "Failed": 1},
    ]
    matrix, names = audits.confusion(run)  # b is only predicted for an unlabelled image
    assert names == ["a", "c"]
    assert matrix.tolist() == [[2, 1], [0, 1]]


def test_a_cancelled_task_stops_at_its_next_progress_call():
    steps = []

    def work(progress):
        for step in range(1000):
            progress(step / 1000, f"step {step}")
            steps.append(step)
            time.sleep(0.005)
        return "finished"

    task = tasks.start(("test", "cancel"), "test", "count", work)
    assert tasks.start(("test", "cancel"), "test", "count", work) is task  # one per key
    with pytest.raises(tasks.TaskRefused, match="1 test job is already running"):
        tasks.start(("test", "other"), "test", "other", work, limit=1)
    time.sleep(0.1)
    task.cancel()
    done = tasks.wait(("test", "cancel"), 10)
    assert done is task and task.status == "cancelled" and task.result is None
    assert 0 < len(steps) < 1000
    assert tasks.start(("test", "ok"), "test", "ok", lambda progress: 42) is not None
    assert tasks.wait(("test", "ok"), 10).result == 42


# ------------------------------------------------------------------------------------------------
# The page
# ------------------------------------------------------------------------------------------------
AppTest = pytest.importorskip("streamlit.testing.v1").AppTest


@pytest.fixture
def audit_app(tmp_path, monkeypatch):
    """The app on the Audit page with the shipped shortcut model, runs under ``tmp_path``."""
    if not SHORTCUT_MODEL.exists():
        pytest.skip("the demo models are not built")
    monkeypatch.delenv("EXPLAINER_ASSETS_DIR", raising=False)
    monkeypatch.delenv(audits.ENV_DATA_ROOT, raising=False)
    monkeypatch.setenv(audits.ENV_AUDIT_ROOT, str(tmp_path / "runs"))
    from dashboard import worker

    # One compute worker is enough here (an audit, then its analysis), and starting one (it
    # imports TensorFlow) is most of this test's time; a pool already running is used as it is.
    made = worker.existing_pool() is None
    if made:
        monkeypatch.setenv("EXPLAINER_WORKERS", "1")
    at = AppTest.from_file(str(APP), default_timeout=180)
    at.switch_page("app_pages/audit.py")
    at.session_state["sidebar_demo_model"] = "demo_shortcut.keras"
    at.run()
    assert_clean(at)
    assert at.session_state["active_model"].ref.file_name == "demo_shortcut.keras"
    yield at
    if made:
        worker.shutdown_pool()  # later tests get a pool with the normal environment


def assert_clean(at) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def settle(at, key, timeout: float = 120):
    """Wait for the background task ``key`` and any analysis it leads to, rerunning the page."""
    tasks.wait(key, timeout)
    at.run()
    deadline = time.monotonic() + timeout
    while any(t.running for t in tasks.running("analysis")) and time.monotonic() < deadline:
        time.sleep(0.05)
    at.run()


def test_the_audit_page_runs_resumes_reviews_and_opens_an_image_on_explain(audit_app):
    """A 160-image shortcut_half audit from the page (one test: the workers' start-up is most of
    its time). Widget changes while it runs do not stop it; cancelled, it resumes from its
    committed images; the review's numbers are the run folder's, its flags find the corner
    marker, the scatter and a cluster's images are shown, and an image opens on Explain with its
    masks, the sidebar's model kept. (The HTML report's download is the browser test's.)"""
    from dashboard import service
    from explainers import audit

    at = audit_app
    total = 160
    at.number_input(key="audit_demo_n").set_value(total).run()
    at.number_input(key="audit_demo_seed").set_value(5).run()
    assert f"**{total} images** in 4 classes (circle, square, triangle, star)" in texts(at.markdown)
    at.button(key="audit_run").click().run()
    assert_clean(at)
    path = at.session_state["audit_open_run"]
    assert Path(path).parent == Path(os.environ[audits.ENV_AUDIT_ROOT]).resolve()
    key = ("audit", path)

    # The user keeps working on the page while the audit runs: nothing stops it.
    at.number_input(key="audit_demo_seed").set_value(6).run()
    at.selectbox(key="audit_map_size").select(16).run()
    assert_clean(at)
    task = tasks.get(key)
    assert task is not None and task.running, (task.status, task.error)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        info = audits.read_run_info(path)
        if info is not None and info.done >= 32:
            break
        time.sleep(0.02)
    task.cancel()
    assert tasks.wait(key, 30).status == "cancelled"
    at.number_input(key="audit_demo_seed").set_value(5).run()
    at.selectbox(key="audit_map_size").select(32).run()
    assert_clean(at)
    done = audits.read_run_info(path).done
    assert 32 <= done < total
    assert f"The audit was cancelled: {done:,} of {total} images are committed" in texts(at.warning)
    assert at.button(key="audit_run").label == f"Resume the audit ({done} of {total} done)"
    at.button(key="audit_resume").click().run()
    settle(at, key)
    assert_clean(at)
    assert tasks.get(key).result.resumed_from == done
    assert json.loads((Path(path) / "progress.json").read_text()) == {"done": total}
    assert at.button(key="audit_run").label == "Open the finished run"

    # The review: the run folder's numbers, and the analysis the page had computed (by the
    # library, in the worker).
    run = audit.open_run(path)
    assert run.manifest["dataset"]["source"] == "demo:shortcut_half"
    correct = sum(bool(v) for v in run.table.column("correct").to_pylist())
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Images"] == str(total)
    assert metrics["Accuracy"] == f"{correct / total:.1%}"
    info = audits.read_run_info(path)
    review = service.cached_audit_analysis(path, info.version, "grad_cam", "label")
    assert review is not None and review.done == total
    # The shortcut model looks at the marker: every class has a flagged fixed-location cluster.
    assert {f.class_index for f in review.flags if f.kind == "fixed_location"} == {0, 1, 2, 3}
    assert metrics["Flags"] == str(len(review.flags))
    assert f"Flags ({len(review.flags)})" in [s.value for s in at.subheader]
    shown = texts(at.markdown)
    assert shown.count("**Attention at a fixed place**") == sum(
        f.kind == "fixed_location" for f in review.flags[: audit_page.FLAGS_SHOWN]
    )
    listed = review.flags[: audit_page.FLAGS_SHOWN]  # the rest behind "Show all N flags"
    for flag in listed:
        assert flag.evidence in shown
    if len(review.flags) > audit_page.FLAGS_SHOWN:
        caption = f"The first {audit_page.FLAGS_SHOWN} flags of {len(review.flags)}."
        assert caption in [c.value for c in at.caption]
    assert len(at.get("plotly_chart")) == 1  # the confusion matrix
    first = review.classes[0]
    # The SpRAy scatter of the first class (Vega-Lite): a point per image, each with a hover
    # picture (a data URL in the tooltip's `image` field, which Vega's tooltip draws).
    scatter = [c for c in at.get("vega_lite_chart") if (c.key or "").startswith("audit_scatter_")]
    assert len(scatter) == 1
    spec = json.loads(scatter[0].proto.spec)
    assert {"field": "image", "type": "nominal", "title": "image"} in spec["encoding"]["tooltip"]
    assert sorted(scatter[0].proto.selection_mode) == [audits.SCATTER_BOX, audits.SCATTER_PICK]
    points = scatter_points(scatter[0].proto)
    assert sorted(points["index"]) == sorted(first.images.tolist())
    assert all(p.startswith("data:image/jpeg;base64,") and len(p) < 8000 for p in points["image"])
    members = first.images[first.clusters == 0]
    assert f"**Cluster 0 of circle** · {len(members)} images" in shown

    # An image of the cluster on Explain: the session's image, with the demo's masks.
    member = int(audits.typical_order(run.maps["grad_cam"], members)[0])
    at.button(key=f"audit_explain_cluster_0_{member}").click().run()
    assert_clean(at)
    image = at.session_state["active_image"]
    assert image.name == f"shortcut_half-5-{member:06d}"
    expected, mask, marker = audit.demo_dataset("shortcut_half", total, seed=5).read_item(member)
    np.testing.assert_array_equal(image.pixels, expected)
    np.testing.assert_array_equal(image.mask, mask)
    assert (image.marker is None) == (marker is None)
    assert [t.value for t in at.title] == ["Explain"]
    assert at.session_state["active_model"].ref.file_name == "demo_shortcut.keras"


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def scatter_points(proto) -> dict[str, list]:
    """The rows of a Vega-Lite chart's (one) dataset, column by column."""
    import pyarrow as pa

    data = [d.data.data for d in proto.datasets] or [proto.data.data]
    assert len(data) == 1
    return pa.ipc.open_stream(data[0]).read_all().to_pydict()
