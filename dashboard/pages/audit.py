"""The Audit page's own widgets: the dataset and run controls, the progress of a running audit
and its analysis (read from :mod:`dashboard.tasks`, never waited on), and the review of a run —
accuracy and confusion, class mean maps, the SpRAy scatter with its clusters, the flags with their
evidence, any image opened on Explain, the HTML report.

The audit and its analysis run in compute workers through background tasks: a widget changed
while they run stops only this script run, not them (see :mod:`dashboard.tasks`)."""

from __future__ import annotations

import dataclasses
import hashlib
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from dashboard import audits, service, state, tasks
from dashboard.audits import AuditInputError, DatasetChoice, RunImages, RunInfo
from dashboard.service import AuditReview, ModelSummary, ServiceError
from dashboard.widgets.pickers import method_label

PAGE = "audit"
#: The run folder shown on the page (plain session state, not a widget).
OPEN_RUN = "audit_open_run"
#: Set by an "Explain" button's callback: the next run of the page switches to Explain.
GO_EXPLAIN = "audit_go_explain"
#: A message left by a callback for the next run to show (what could not be done, and why).
NOTICE = "audit_notice"
EXPLAIN_PAGE = "app_pages/explain.py"
#: The sidebar's widgets whose values can be set (not the file uploaders, camera or buttons).
SIDEBAR_KEYS = (
    "sidebar_model_source",
    "sidebar_preprocessing",
    "sidebar_demo_model",
    "sidebar_application",
    "sidebar_sample",
    "sidebar_outline_mask",
    "sidebar_outline_marker",
)

SOURCES = {"demo": "Demo dataset", "folder": "Folder on the server", "zip": "Upload a zip"}
MODES = {"new": "New audit", "earlier": "Earlier runs"}
DEFAULT_METHODS = ("grad_cam",)
MAP_SIZES = (16, 32, 64)
#: Images per page of a cluster's grid, and per row.
GRID_PAGE = 12
GRID_COLUMNS = 6
FLAG_EXAMPLES = 4
THUMBNAIL = 128
GROUPS = {"label": "its label", "prediction": "its prediction"}
#: At most this many class mean maps, and flags until "Show all flags" is on.
MAX_MEAN_MAPS = 48
FLAGS_SHOWN = 20


def key(name: str) -> str:
    return f"{PAGE}_{name}"


def _run_key(info: RunInfo) -> str:
    """A short tag of a run and its version, for the keys of per-run widgets."""
    return hashlib.sha1(f"{info.path}|{info.version}".encode()).hexdigest()[:8]


# ------------------------------------------------------------------------------------------------
# Messages and the jump to Explain
# ------------------------------------------------------------------------------------------------
def follow_explain_jump() -> None:
    """Switch to Explain when an "Explain" button's callback asked for it (the image is already
    the session's active image)."""
    if st.session_state.pop(GO_EXPLAIN, False):
        st.switch_page(EXPLAIN_PAGE)


def show_notice() -> None:
    notice = st.session_state.pop(NOTICE, None)
    if notice:
        st.error(notice)


def _readonly(mask: np.ndarray | None) -> np.ndarray | None:
    if mask is None:
        return None
    array = np.ascontiguousarray(mask, bool)
    array.setflags(write=False)
    return array


def _open_on_explain(path: str, index: int) -> None:
    """Callback: make image ``index`` of the run the session's image (as the sidebar's upload
    does: decoded from PNG bytes, with the demo's object and marker masks) and go to Explain."""
    info = audits.read_run_info(path)
    try:
        if info is None:
            raise AuditInputError("the run folder is gone")
        run = audits.load_run(info)
        images = audits.run_images(info, run, audits.readable_roots())
        pixels, mask, marker = images.read(index)
        loaded = service.load_image_bytes(images.name(index), audits.png(pixels))
    except (AuditInputError, ServiceError) as err:
        st.session_state[NOTICE] = f"Image #{index} cannot be opened on Explain: {err}"
        return
    state.set_image(dataclasses.replace(loaded, mask=_readonly(mask), marker=_readonly(marker)))
    # st.switch_page drops the state of every widget not kept with persist_state (the rerun it
    # asks for carries no widget values): the sidebar would fall back to its defaults and load
    # the default model. Values set through session state survive, so set the sidebar's again.
    for name in SIDEBAR_KEYS:
        if name in st.session_state:
            st.session_state[name] = st.session_state[name]
    # The sidebar then shows its (empty) upload box above the image, as after an upload; the
    # image attempt is unchanged, so nothing reloads over the image.
    st.session_state["sidebar_image_source"] = "Upload"
    st.session_state[GO_EXPLAIN] = True


# ------------------------------------------------------------------------------------------------
# Choosing a dataset and starting a run
# ------------------------------------------------------------------------------------------------
def mode_control() -> str:
    state.default(key("mode"), "new")
    return st.segmented_control(
        "What to do",
        list(MODES),
        format_func=MODES.get,
        key=key("mode"),
        required=True,
        persist_state="session",
        on_change=_mode_changed,
        label_visibility="collapsed",
    )


def _mode_changed() -> None:
    # Opening the list shows the run already on screen, not the newest one.
    if st.session_state.get(key("mode")) == "earlier" and st.session_state.get(OPEN_RUN):
        st.session_state[key("earlier")] = st.session_state[OPEN_RUN]


def new_audit(model: ModelSummary | None) -> None:
    """The dataset, methods and map size of a new audit, and the button that starts it (or
    resumes or opens the same audit's run folder)."""
    with st.container(border=True, key=key("new")):
        state.default(key("source"), "demo")
        source = st.segmented_control(
            "Dataset",
            list(SOURCES),
            format_func=SOURCES.get,
            key=key("source"),
            required=True,
            persist_state="session",
        )
        choice = _dataset_choice(source)
        if model is None:
            st.info("Load a model in the sidebar: the audit explains that model's decisions.")
            return
        methods, map_size = _method_controls(model)
        if choice is None:
            return
        _dataset_summary(choice)
        problem = audits.label_problem(choice.class_names, model.class_names)
        if problem:
            st.error(problem)
            return
        if not methods:
            st.info("Pick at least one method above.")
            return
        try:
            root = audits.audit_root()
        except AuditInputError as err:
            st.error(str(err))
            return
        folder = audits.run_folder(
            root, choice, model.ref.key, model.ref.file_name, methods, map_size
        )
        _run_buttons(model, choice, folder, methods, map_size)


def _dataset_choice(source: str) -> DatasetChoice | None:
    try:
        if source == "demo":
            return _demo_controls()
        if source == "folder":
            return _folder_controls()
        return _zip_controls()
    except AuditInputError as err:
        st.error(str(err))
        return None


def _demo_controls() -> DatasetChoice:
    names = list(audits.DEMO_DATASETS)
    state.default_option(key("demo_name"), names, names[0])
    state.default(key("demo_n"), 200)
    state.default(key("demo_seed"), 0)
    left, middle, right = st.columns([2.2, 1, 1])
    name = left.selectbox(
        "Demo dataset",
        names,
        key=key("demo_name"),
        format_func=audits.DEMO_DATASETS.get,
        persist_state="session",
        help="The shapes the demo models were trained on, generated on the fly with their object "
        "masks. With the shortcut model, half of the images carry the corner marker it learned "
        "to look at: the audit finds that.",
    )
    count = middle.number_input(
        "Images",
        min_value=1,
        max_value=audits.DEMO_MAX_IMAGES,
        step=50,
        key=key("demo_n"),
        persist_state="session",
        help="SpRAy needs at least 10 images per class (4 classes).",
    )
    seed = right.number_input(
        "Seed",
        min_value=0,
        max_value=2**31 - 1,
        step=1,
        key=key("demo_seed"),
        persist_state="session",
    )
    return audits.demo_choice(name, int(count), int(seed))


def _folder_controls() -> DatasetChoice | None:
    root, problem = audits.data_root()
    if root is None:
        st.info(problem)
        return None
    candidates = audits.dataset_candidates(root)
    chosen = st.selectbox(
        "Folder or manifest under the data root",
        candidates,
        index=None,
        key=key("folder"),
        accept_new_options=True,
        placeholder="Pick one, or type a path relative to the data root",
        persist_state="session",
        help=f"Only folders under the data root ({root}) can be read from the web page. A "
        "folder holds one sub-folder of images per class (named after the model's classes); "
        "a manifest is a CSV or Parquet table with columns path,label[,mask_path].",
    )
    if not chosen:
        st.caption(f"Data root: `{root}`")
        return None
    path = audits.resolve_in_root(root, chosen)
    return audits.folder_choice(path, audits.readable_roots(), label=chosen)


def _zip_controls() -> DatasetChoice | None:
    limits = audits.ZipLimits.from_environment()
    upload = st.file_uploader(
        "Zip of the dataset",
        type=["zip"],
        key=key("zip"),
        help=f"A .zip of a folder with one sub-folder of images per class (named after the "
        f"model's classes), up to {limits.max_zip_bytes / 2**20:.0f} MB, "
        f"{limits.max_files:,} files and {limits.max_total_bytes / 2**20:,.0f} MB unpacked. "
        "Files that are not images are skipped.",
    )
    if upload is None:
        st.caption(
            "Nothing uploaded yet. The zip is unpacked on the server (once per file) under the "
            "audit folder; only its image files are kept."
        )
        return None
    kept = st.session_state.get(key("zip_unpacked"))
    if kept is None or kept[0] != upload.file_id:
        try:
            extracted = audits.extract_zip(
                upload.getvalue(), audits.uploads_root(), limits, name=upload.name
            )
        except AuditInputError as err:
            kept = (upload.file_id, None, str(err))
        else:
            kept = (upload.file_id, extracted, None)
        st.session_state[key("zip_unpacked")] = kept
    _, extracted, problem = kept
    if problem is not None:
        raise AuditInputError(problem)
    note = f"Unpacked **{extracted.images:,} image files** from {upload.name}."
    skipped = extracted.skipped_summary()
    st.caption(note + (f" Skipped: {skipped}." if skipped else ""))
    return audits.folder_choice(
        extracted.folder, [audits.uploads_root()], label=f"zip-{Path(upload.name).stem}"
    )


def _dataset_summary(choice: DatasetChoice) -> None:
    text = choice.describe()
    if choice.skipped:
        reasons: dict[str, int] = {}
        for _, reason in choice.skipped:
            reasons[reason] = reasons.get(reason, 0) + 1
        listed = ", ".join(f"{n} {reason}" for reason, n in reasons.items())
        text += f" · skipped {len(choice.skipped)} files ({listed})"
    st.markdown(text)


def _method_controls(model: ModelSummary) -> tuple[list[str], int]:
    offered = [m.name for m in model.methods if m.applicable]
    defaults = [n for n in DEFAULT_METHODS if n in offered] or offered[:1]
    state.default_option(key("methods"), offered, defaults)
    state.default_option(key("map_size"), list(MAP_SIZES), 32)
    left, right = st.columns([3, 1])
    methods = left.multiselect(
        "Methods",
        offered,
        key=key("methods"),
        format_func=method_label(model),
        persist_state="session",
        placeholder="Pick one or more methods",
        help="Every image is explained by every method, for the model's top class, with the "
        "method's default parameters. Grad-CAM costs about one model pass per image; occlusion, "
        "RISE, LIME and Kernel SHAP hundreds.",
    )
    map_size = right.selectbox(
        "Stored map size",
        list(MAP_SIZES),
        key=key("map_size"),
        format_func=lambda s: f"{s}×{s}",
        persist_state="session",
        help="Each map is kept at this size (float16) for the analysis and the pictures.",
    )
    return list(methods), int(map_size)


def audit_slots() -> int:
    """How many audits may run at once: all workers but one, which stays free for the other
    pages (at least one)."""
    return max(1, service.worker.pool().settings.workers - 1)


def _start_audit(
    model: ModelSummary,
    spec: Any,
    folder: Path,
    methods: Sequence[str],
    map_size: int,
    *,
    resume: bool,
) -> bool:
    ref, path = model.ref, str(folder)

    def work(progress: Any) -> service.AuditRunOutcome:
        return service.run_audit(
            ref,
            spec,
            path,
            methods=tuple(methods),
            map_size=map_size,
            resume=resume,
            progress=progress,
        )

    try:
        tasks.start(
            ("audit", path),
            "audit",
            f"audit {folder.name}",
            work,
            limit=audit_slots(),
            limit_reason=" and one compute worker stays free for the other pages",
        )
    except tasks.TaskRefused as err:
        st.error(str(err))
        return False
    st.session_state[OPEN_RUN] = path
    return True


def _run_buttons(
    model: ModelSummary, choice: DatasetChoice, folder: Path, methods: list[str], map_size: int
) -> None:
    info = audits.read_run_info(folder)
    task = tasks.get(("audit", str(folder)))
    running = task is not None and task.running
    if running:
        label = "Show the running audit"
    elif info is None:
        label = "Run the audit"
    elif info.complete:
        label = "Open the finished run"
    else:
        label = f"Resume the audit ({info.done:,} of {info.total:,} done)"
    left, right, _ = st.columns([1.3, 1, 2])
    if left.button(label, type="primary", key=key("run"), icon=":material/play_arrow:"):
        if running or (info is not None and info.complete):
            st.session_state[OPEN_RUN] = str(folder)
        else:
            _start_audit(model, choice.spec, folder, methods, map_size, resume=True)
    if (
        info is not None
        and not running
        and right.button(
            "Start over",
            key=key("restart"),
            icon=":material/restart_alt:",
            help="Delete this run's results and compute them again.",
        )
    ):
        _start_audit(model, choice.spec, folder, methods, map_size, resume=False)
    st.caption(
        f"Run folder: `{folder}` — the same model, dataset and methods always use this folder, "
        "so a stopped run resumes where it stopped."
    )


def earlier_runs() -> None:
    """The runs in the audit folder, newest first; the one picked is shown below."""
    try:
        root = audits.audit_root()
    except AuditInputError as err:
        st.error(str(err))
        return
    runs = audits.list_runs(root)
    if not runs:
        st.info(f"No audit run in `{root}` yet. Start one under *New audit*.")
        return
    paths = [str(r.path) for r in runs]
    labels = {}
    for run in runs:
        task = tasks.get(("audit", str(run.path)))
        running = " · running now" if task is not None and task.running else ""
        labels[str(run.path)] = run.describe() + running
    current = st.session_state.get(OPEN_RUN)
    state.default_option(key("earlier"), paths, current if current in paths else paths[0])
    chosen = st.selectbox(
        "Earlier runs (newest first)",
        paths,
        key=key("earlier"),
        format_func=labels.get,
        persist_state="session",
        help=f"The runs in the audit folder {root} (EXPLAINER_AUDIT_ROOT).",
    )
    st.session_state[OPEN_RUN] = chosen


# ------------------------------------------------------------------------------------------------
# A run's progress and state
# ------------------------------------------------------------------------------------------------
def _progress_panel(task_key: Any, title: str, note: str) -> None:
    task = tasks.get(task_key)
    if task is None or not task.running:
        st.rerun()  # finished since the page was drawn: draw the results
    with st.container(border=True, key=key("progress_box")):
        st.markdown(f"**{title}**")
        st.progress(task.fraction, text=f"{task.message} · {task.seconds:.0f} s")
        if task.kind == "audit" and st.button(
            "Cancel",
            key=key("cancel"),
            icon=":material/stop:",
            disabled=task.cancel_requested,
            help="Stop after the current image. The committed images stay; starting the same "
            "audit again resumes it.",
        ):
            task.cancel()
            st.rerun(scope="fragment")
        st.caption(note)


#: While a task runs, its panel redraws itself every second (a fragment: the rest of the page
#: stays as it is, and a widget change elsewhere only stops the page's run, not the task).
_live_progress = st.fragment(_progress_panel, run_every=1.0)


def run_status(path: str, model: ModelSummary | None) -> RunInfo | None:
    """The open run's state: a live progress panel while its audit runs (None: nothing more to
    show), or what stopped it with a Resume button; the run's :class:`RunInfo` when it has
    committed images to review."""
    task_key = ("audit", path)
    task = tasks.get(task_key)
    if task is not None and task.running:
        _live_progress(
            task_key,
            "Auditing the dataset…",
            "The audit runs in a compute worker, not in this page: you can change settings or "
            "visit other pages meanwhile and come back. A cancelled audit resumes where it "
            "stopped.",
        )
        return None
    info = audits.read_run_info(path)
    if task is not None and task.status == "failed":
        st.error(task.error)
    if info is None:
        if task is None or task.status != "failed":
            st.warning(
                f"There is no audit run in `{path}` any more (the folder was deleted or "
                "moved). Start the audit again, or pick another run."
            )
        return None
    st.subheader(f"{info.dataset} · {info.model}")
    st.caption(
        f"Run folder `{info.path}` · started {info.created.replace('T', ' ')} · methods "
        f"{', '.join(info.methods)} · maps {info.map_size}×{info.map_size}"
    )
    if model is not None and model.ref.sha256 != info.model_sha256:
        st.caption(
            f"This run was made with **{info.model}**; the sidebar's model is "
            f"**{model.ref.file_name}**. An image opened on Explain is explained with the "
            "sidebar's model."
        )
    if not info.complete:
        _incomplete(info, model, task)
    return info if info.done > 0 else None


def _incomplete(info: RunInfo, model: ModelSummary | None, task: tasks.Task | None) -> None:
    if task is not None and task.status == "cancelled":
        what = "The audit was cancelled"
    elif task is not None and task.status == "failed":
        what = "The audit stopped on the error above"
    else:
        what = "The audit was stopped (or the server restarted)"
    st.warning(
        f"{what}: {info.done:,} of {info.total:,} images are committed. Resume continues "
        "from there; the review below covers the committed images."
    )
    problem = None
    if model is None:
        problem = "Load a model in the sidebar to resume."
    elif model.ref.sha256 != info.model_sha256 or model.preprocessing != info.preprocessing:
        problem = (
            f"To resume, load the run's model ({info.model}, preprocessing "
            f"{info.preprocessing}) in the sidebar."
        )
    if st.button(
        "Resume the audit",
        key=key("resume"),
        type="primary",
        icon=":material/play_arrow:",
        disabled=problem is not None,
        help=problem,
    ):
        try:
            spec = audits.resume_spec(info, audits.readable_roots())
        except AuditInputError as err:
            st.error(str(err))
            return
        assert model is not None
        if _start_audit(model, spec, info.path, list(info.methods), info.map_size, resume=True):
            st.rerun()
    elif problem:
        st.caption(problem)


# ------------------------------------------------------------------------------------------------
# The review of a run
# ------------------------------------------------------------------------------------------------
def analysis_controls(info: RunInfo) -> tuple[str, str]:
    methods = list(info.methods)
    state.default_option(key("review_method"), methods, methods[0])
    state.default_option(key("group_by"), list(GROUPS), "label")
    left, right, _ = st.columns([1, 1.4, 1.6])
    method = left.selectbox(
        "Maps of",
        methods,
        key=key("review_method"),
        persist_state="session",
        help="The method whose maps are analysed and shown.",
    )
    group_by = right.radio(
        "An image belongs to the class of",
        list(GROUPS),
        key=key("group_by"),
        format_func=GROUPS.get,
        horizontal=True,
        persist_state="session",
        help="Its label: what the model should see. Its prediction: what it saw.",
    )
    return method, group_by


def analysis(info: RunInfo, method: str, group_by: str) -> AuditReview | None:
    """The run's analysis: cached, or computed in a worker by a background task (a live panel
    meanwhile: None), or its failure with a Retry button (None)."""
    path, version = str(info.path), info.version
    review = service.cached_audit_analysis(path, version, method, group_by)
    if review is not None:
        return review
    task_key = ("audit_analysis", path, version, method, group_by)
    task = tasks.get(task_key)
    if task is not None and task.status == "failed":
        st.error(task.error)
        retry = st.button(
            "Retry the analysis", key=key("analysis_retry"), icon=":material/refresh:"
        )
        if not retry:
            return None
        if task.retry_key is not None:
            service.forget_failure(task.retry_key)
        task = None
    if task is None or task.status == "cancelled":

        def work(progress: Any) -> AuditReview:
            progress(0.0, f"analysing {info.done:,} maps: SpRAy clustering and t-SNE per class…")
            return service.audit_analysis(path, version, method, group_by)

        task = tasks.start(task_key, "analysis", f"analyse {info.path.name}", work)
    if task.running:
        _live_progress(
            task_key,
            "Analysing the maps…",
            "Class mean maps, SpRAy clusters with their t-SNE embedding, and the flags: computed "
            "once per run in a compute worker, then kept.",
        )
        return None
    return task.result if task.status == "done" else None


def summary(info: RunInfo, run: Any, review: AuditReview | None) -> None:
    rows = audits.class_accuracy(run)
    labelled = sum(r["Images"] for r in rows)
    correct = sum(r["Correct"] for r in rows)
    errors = len(audits.failed_rows(run, limit=10**9))
    cells = st.columns(4)
    cells[0].metric("Images", f"{info.done:,}", help=f"of {info.total:,} in the dataset")
    cells[1].metric(
        "Accuracy",
        f"{correct / labelled:.1%}" if labelled else "—",
        help=f"{correct:,} of {labelled:,} labelled images predicted right",
    )
    cells[2].metric("Failed images", f"{errors:,}", help="Unreadable, or a method failed.")
    cells[3].metric(
        "Flags", "…" if review is None else f"{len(review.flags)}", help="Findings with evidence."
    )


def report_download(info: RunInfo, method: str, group_by: str) -> None:
    path, version = str(info.path), info.version

    def page() -> str:
        try:
            return service.audit_report(path, version, method, group_by)
        except ServiceError as err:
            return (
                "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Audit report</title>"
                "</head><body><h1>The audit report could not be built</h1>"
                f"<p>{html.escape(str(err))}</p></body></html>"
            )

    st.download_button(
        "Download the HTML report",
        page,
        file_name=f"audit-report-{info.path.name[:80]}-{method}.html",
        mime="text/html",
        key=key("report"),
        on_click="ignore",
        type="primary",
        icon=":material/description:",
        help="One self-contained page: provenance, accuracy and confusion, class mean maps, "
        "the SpRAy clusters with example images, and the flags with their evidence.",
    )


def accuracy(run: Any) -> None:
    rows = audits.class_accuracy(run)
    if not rows:
        st.info("No image of this run has a label, so there is no accuracy to show.")
        return
    left, right = st.columns([1, 1.3])
    with left:
        st.markdown("**Accuracy per class**")
        st.dataframe(
            rows,
            hide_index=True,
            width="stretch",
            column_config={
                "Accuracy": st.column_config.ProgressColumn(
                    "Accuracy", min_value=0.0, max_value=1.0, format="percent"
                )
            },
        )
        failed = audits.failed_rows(run)
        if failed:
            with st.expander(f"Failed images ({len(failed)} shown)"):
                st.dataframe(failed, hide_index=True, width="stretch")
    with right:
        st.markdown("**Confusion** · rows: label, columns: prediction")
        matrix, names = audits.confusion(run)
        st.plotly_chart(
            audits.confusion_figure(matrix, names),
            theme=None,
            key=key("confusion"),
            config={"displaylogo": False},
        )


def mean_maps(review: AuditReview, run: Any) -> None:
    st.markdown(
        f"**What the model looks at, per class** · the mean of each image's normalised positive "
        f"map, grouped by {GROUPS[review.group_by]}"
    )
    table = audits.columns(run, ["label", "prediction"])
    grouping = table["label" if review.group_by == "label" else "prediction"]
    counts: dict[int, int] = {}
    for c in grouping:
        if c is not None:
            counts[c] = counts.get(c, 0) + 1
    shown = [
        c
        for c in range(len(review.class_names))
        if counts.get(c) and np.isfinite(review.mean_maps[c]).all()
    ]
    if len(shown) > MAX_MEAN_MAPS:
        st.caption(
            f"The {MAX_MEAN_MAPS} classes with the most images of {len(shown)}; the explorer "
            "below reaches every class."
        )
        shown = sorted(shown, key=lambda c: -counts[c])[:MAX_MEAN_MAPS]
    cells = st.columns(max(4, min(len(shown), 8)))
    for position, c in enumerate(shown):
        with cells[position % len(cells)]:
            name = review.class_names[c]
            picture = audits.map_picture(review.mean_maps[c], 160)
            st.image(picture, caption=f"{name} · {counts[c]} images")
            if c in review.skipped:
                st.caption(f"No SpRAy: {review.skipped[c]}.")


def _table(run: Any) -> dict[str, list[Any]]:
    return audits.columns(
        run, ["id", "label_name", "prediction_name", "probability", "correct", "error"]
    )


def _caption(table: dict[str, list[Any]], index: int) -> str:
    """'#17 ✓ circle 100%', '#5 ✗ circle→star 98%', '#8 → star 61%' (unlabelled), '#3 failed'."""
    label, prediction = table["label_name"][index], table["prediction_name"][index]
    if prediction is None:
        return f"#{index} failed"
    probability = f"{table['probability'][index]:.0%}"
    if table["correct"][index]:
        return f"#{index} ✓ {prediction} {probability}"
    if label is None:
        return f"#{index} → {prediction} {probability}"
    return f"#{index} ✗ {label}→{prediction} {probability}"


def image_grid(
    info: RunInfo,
    images: RunImages,
    maps: np.ndarray,
    indices: Sequence[int],
    table: dict[str, list[Any]],
    method: str,
    where: str,
    columns: int = GRID_COLUMNS,
) -> None:
    """Thumbnails with the map over them, each with an "Explain" button."""
    path = str(info.path)
    for start in range(0, len(indices), columns):
        row = indices[start : start + columns]
        for cell, index in zip(st.columns(columns), row, strict=False):
            with cell:
                picture, why = audits.thumbnail(info, images, maps, int(index), method, THUMBNAIL)
                if picture is not None:
                    st.image(picture, caption=_caption(table, int(index)), width="stretch")
                else:
                    st.caption(f"{_caption(table, int(index))}: {why}")
                st.button(
                    "Explain",
                    key=key(f"explain_{where}_{index}"),
                    on_click=_open_on_explain,
                    args=(path, int(index)),
                    icon=":material/image_search:",
                    width="stretch",
                    help=f"Open {table['id'][int(index)]} on the Explain page.",
                )


def _image_detail(
    info: RunInfo,
    images: RunImages,
    maps: np.ndarray,
    index: int,
    table: dict[str, list[Any]],
    method: str,
) -> None:
    st.markdown(f"**{table['id'][index]}**")
    try:
        pixels, _, _ = images.read(index)
    except AuditInputError as err:
        st.caption(str(err))
        pixels = None
    left, right = st.columns(2)
    if pixels is not None:
        left.image(audits.fit(pixels, 200), caption="image", width="stretch")
        right.image(
            audits.overlay_picture(pixels, maps[index], 200),
            caption=f"{method} map",
            width="stretch",
        )
    st.markdown(_caption(table, index))
    if table["error"][index]:
        st.caption(f"Error: {table['error'][index]}")
    st.button(
        "Open on Explain",
        key=key(f"explain_point_{index}"),
        on_click=_open_on_explain,
        args=(str(info.path), int(index)),
        icon=":material/image_search:",
        type="primary",
    )


def _show_cluster(class_index: int, cluster: int, tag: str) -> None:
    """Callback of a flag's "Show this cluster": point the explorer at it."""
    st.session_state[key("class")] = class_index
    st.session_state[key(f"cluster_{tag}_{class_index}")] = cluster


def spray_explorer(
    info: RunInfo, run: Any, review: AuditReview, images: RunImages, method: str
) -> None:
    """One class's embedding (a scatter coloured by SpRAy cluster: hover a point for its image
    and map, click it to open them, drag a box to select several), a cluster picker, and the
    cluster's (or the selection's) images with their maps."""
    names = review.class_names
    analysed = [c.class_index for c in review.classes]
    if not analysed:
        reasons = "; ".join(review.skipped.values())
        st.info(f"No class has enough images for SpRAy ({reasons}). Audit more images.")
        return
    tag = _run_key(info)
    flagged = {
        c: sorted({f.cluster for f in review.flags_of(c) if f.cluster is not None})
        for c in analysed
    }

    def class_label(c: int) -> str:
        found = review.class_review(c)
        assert found is not None
        mark = f" · ⚑ {len(flagged[c])} flagged" if flagged[c] else ""
        return f"{names[c]} · {len(found.images)} images · {found.n_clusters} clusters{mark}"

    state.default_option(key("class"), analysed, analysed[0])
    chosen = st.selectbox(
        "Class", analysed, key=key("class"), format_func=class_label, persist_state="session"
    )
    found = review.class_review(chosen)
    assert found is not None
    table = _table(run)
    maps = run.maps[method]
    with st.spinner("Drawing the pictures the points show on hover…", show_time=True):
        pictures = audits.hover_pictures(info, images, maps, found.images, method)
    chart, detail = st.columns([1.7, 1])
    with chart:
        event = st.altair_chart(
            audits.scatter_chart(found, table, flagged[chosen], pictures),
            on_select="rerun",
            selection_mode=[audits.SCATTER_PICK, audits.SCATTER_BOX],
            key=key(f"scatter_{tag}_{chosen}"),
        )
        kind = "t-SNE" if found.embedding_kind == "tsne" else "spectral embedding"
        shown = sum(p is not None for p in pictures)
        note = ""
        if shown < len(pictures):
            why = (
                f"at most {audits.HOVER_PICTURES:,} per class, spread over it"
                if len(pictures) > audits.HOVER_PICTURES
                else "the other images cannot be read"
            )
            note = f" ({shown:,} of the {len(pictures):,} points have one: {why})"
        st.caption(
            f"Each point is an image of {names[chosen]}, placed by {kind} of its map: nearby "
            "points have similar maps. Colour: SpRAy cluster; ✕: misclassified. Hover a point "
            f"for its image and map{note}; click it to open them here (shift-click adds "
            "points); drag a box to select several; the mouse wheel zooms; double-click clears."
        )
    selection = audits.selected_images(
        (event or {}).get("selection", {}), found.images, found.embedding
    )
    cluster_key = key(f"cluster_{tag}_{chosen}")
    clusters = list(range(found.n_clusters))
    state.default_option(cluster_key, clusters, 0)
    with detail:
        if len(selection) == 1:
            index = selection[0]
            # A newly clicked point opens its cluster below (once: the picker stays free).
            if st.session_state.get(key("clicked")) != (tag, index):
                st.session_state[key("clicked")] = (tag, index)
                position = int(np.flatnonzero(found.images == index)[0])
                st.session_state[cluster_key] = int(found.clusters[position])
            _image_detail(info, images, maps, index, table, method)
        elif selection:
            st.markdown(f"**{len(selection)} images selected** — shown below.")
        else:
            st.info("Click a point to see its image and its map here.")

    def cluster_label(cluster: int) -> str:
        mark = " ⚑" if cluster in flagged[chosen] else ""
        return f"cluster {cluster} · {int(found.sizes[cluster])}{mark}"

    picked = st.segmented_control(
        "Cluster",
        clusters,
        key=cluster_key,
        format_func=cluster_label,
        required=True,
        persist_state="session",
    )
    picked = int(picked if picked is not None else 0)
    with st.container(border=True, key=key("cluster_view")):
        if len(selection) > 1:
            st.markdown(f"**{len(selection)} selected images** (the chart's selection)")
            shown = selection
            where = "selection"
        else:
            members = found.images[found.clusters == picked]
            share = len(members) / max(len(found.images), 1)
            st.markdown(
                f"**Cluster {picked} of {names[chosen]}** · {len(members)} images "
                f"({share:.0%} of the class), most typical first"
            )
            shown = [int(i) for i in audits.typical_order(maps, members)]
            where = f"cluster_{picked}"
            mean_col, flags_col = st.columns([1, 4])
            mean_col.image(
                audits.map_picture(found.cluster_mean_maps[picked], 128),
                caption="the cluster's mean map",
            )
            with flags_col:
                for flag in review.flags_of(chosen, picked):
                    title = audits.FLAG_TITLES.get(flag.kind, flag.kind)
                    st.warning(f"**{title}** — {flag.evidence}")
        pages = max(1, -(-len(shown) // GRID_PAGE))
        page = 1
        if pages > 1:
            page_key = key(f"grid_page_{tag}_{chosen}_{where}")
            state.default(page_key, 1)
            if st.session_state[page_key] > pages:
                st.session_state[page_key] = 1
            page = int(
                st.number_input(
                    f"Page (of {pages}, {GRID_PAGE} images each)",
                    min_value=1,
                    max_value=pages,
                    step=1,
                    key=page_key,
                    persist_state="session",
                )
            )
        window = shown[(page - 1) * GRID_PAGE : page * GRID_PAGE]
        image_grid(info, images, maps, window, table, method, where)


def flags(info: RunInfo, run: Any, review: AuditReview, images: RunImages, method: str) -> None:
    if not review.flags:
        st.success(
            "No flag: no cluster's attention sits at one fixed place or off the object, and no "
            "class has misclassified images."
        )
        return
    tag = _run_key(info)
    table = _table(run)
    maps = run.maps[method]
    shown = review.flags
    if len(shown) > FLAGS_SHOWN and not st.toggle(
        f"Show all {len(shown)} flags", key=key("all_flags"), persist_state="session"
    ):
        st.caption(f"The first {FLAGS_SHOWN} flags of {len(shown)}.")
        shown = shown[:FLAGS_SHOWN]
    for number, flag in enumerate(shown):
        with st.container(border=True, key=key(f"flag_{number}")):
            where = review.class_names[flag.class_index]
            cluster = "" if flag.cluster is None else f" · cluster {flag.cluster}"
            head, action = st.columns([4, 1])
            head.markdown(
                f"**{audits.FLAG_TITLES.get(flag.kind, flag.kind)}** · `{flag.kind}` · class "
                f"{where}{cluster} · {len(flag.images)} images  \n{flag.evidence}"
            )
            if flag.cluster is not None and review.class_review(flag.class_index) is not None:
                action.button(
                    "Show this cluster",
                    key=key(f"flag_show_{number}"),
                    on_click=_show_cluster,
                    args=(flag.class_index, flag.cluster, tag),
                    icon=":material/scatter_plot:",
                    width="stretch",
                )
            examples = [int(i) for i in audits.typical_order(maps, flag.images)[:FLAG_EXAMPLES]]
            image_grid(info, images, maps, examples, table, method, f"flag{number}")
