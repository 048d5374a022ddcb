"""Dashboard latency as a user sees it: from clicking a method to its heatmap, and a display change.

    python benchmarks/dashboard_timing.py [--methods grad_cam,occlusion] [--out benchmarks/results]

Starts ``streamlit run app.py`` on a free localhost port (the shipped demo model and samples) and
drives it with Playwright and Debian's Chromium, like ``tests/test_browser.py``. On the Explain
page, for every method of the registry that applies to the demo model:

* cold: pick the method on the first sample (the worker traces its compiled passes);
* warm: switch to the second sample, then pick each method again (traced, but not cached for this
  image: what a click costs once the dashboard has warmed up);
* cached: pick each method again on the same image (the result cache answers; rendering only).

Each time is measured in the browser from the click on the option to the new overlay image being
in the page (its ``src`` changed and the page header names the method). The library's own compute
time for the result, printed in the overlay's caption (``… · 0.01 s``), is recorded next to it.

Then one display control (overlay opacity) is moved: the time until the overlay is re-drawn, and
evidence that no model call happened, from what the browser sees: no progress bar appeared and
the caption (which carries the compute time of the result) did not change, i.e. the same cached
result was re-rendered. Results go to ``dashboard.json`` and ``dashboard.md`` in ``--out``; the
benchmark's RESULTS.md includes the markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SERVER_START_S = 180
#: How many display changes are timed (the median is reported).
DISPLAY_CHANGES = 6
STEP_S = 300
#: Parameters of the slow methods for this measurement (the dashboard's defaults otherwise).
OVERLAY_IMG = "[data-testid='stMain'] [data-testid='stImage'] img"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(port: int, log_path: Path, call_log: Path) -> subprocess.Popen[bytes]:
    log = log_path.open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            str(ROOT / "app.py"),
            "--server.headless",
            "true",
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--browser.gatherUsageStats",
            "false",
        ],
        cwd=ROOT,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", EXPLAINER_CALL_LOG=str(call_log)),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + SERVER_START_S
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return process
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.terminate()
            raise SystemExit(f"streamlit did not start; see {log_path}")
        time.sleep(0.5)


def method_labels() -> dict[str, str]:
    """{registry name: label} of the methods that apply to the demo model."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import explainers

    bundle = explainers.load_model(
        ROOT / "assets/models/demo_shapes.keras", labels=ROOT / "assets/models/demo_labels.txt"
    )
    return {m.name: m.label for m in explainers.available_methods(bundle) if m.applicable}


class Driver:
    """The Explain page in one browser tab."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.main = page.locator('[data-testid="stMain"]')

    def wait_idle(self) -> None:
        self.page.wait_for_function(
            "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')",
            timeout=STEP_S * 1000,
        )

    def overlay_src(self) -> str | None:
        images = self.page.locator(OVERLAY_IMG)
        return images.nth(1).get_attribute("src") if images.count() >= 2 else None

    def caption(self) -> str:
        text = self.main.inner_text()
        found = re.findall(r"p=\d\.\d{3}\)[^\n]*· (\d+\.\d\d) s", text)
        return found[0] if found else ""

    def watch_progress(self) -> None:
        """Record in the page whether a progress bar shows up from now on."""
        self.page.evaluate(
            """() => {
                window.__sawProgress = !!document.querySelector('[data-testid="stProgress"]');
                if (window.__progressObserver) window.__progressObserver.disconnect();
                window.__progressObserver = new MutationObserver(() => {
                    if (document.querySelector('[data-testid="stProgress"]'))
                        window.__sawProgress = true;
                });
                window.__progressObserver.observe(document.body, {childList: true, subtree: true});
            }"""
        )

    def saw_progress(self) -> bool:
        return bool(self.page.evaluate("() => window.__sawProgress"))

    def wait_for_overlay(self, label: str, before: str | None, started: float) -> float:
        """Seconds from ``started`` until the page shows ``label``'s overlay with a new picture."""
        self.main.get_by_text(f"{label} overlay", exact=True).wait_for(timeout=STEP_S * 1000)
        self.page.wait_for_function(
            """([selector, before]) => {
                const images = document.querySelectorAll(selector);
                return images.length >= 2 && images[1].complete && images[1].src !== before;
            }""",
            arg=[OVERLAY_IMG, before or ""],
            timeout=STEP_S * 1000,
        )
        return time.perf_counter() - started

    def pick(self, widget_key: str, option: str | int) -> float:
        """Open a selectbox and click an option (by label or index); returns the click time."""
        # Streamlit ≥ 1.5x draws a selectbox as a combo box: a text input that opens a list box.
        self.page.locator(f".st-key-{widget_key} [role='combobox']").click()
        if isinstance(option, int):
            target = self.page.get_by_role("option").nth(option)
        else:  # type to filter: long option lists are virtualised
            self.page.keyboard.press("ControlOrMeta+a")
            self.page.keyboard.type(option)
            target = self.page.get_by_role("option", name=option, exact=True)
        target.wait_for(timeout=STEP_S * 1000)
        started = time.perf_counter()
        target.click()
        return started

    def method(self, label: str) -> dict[str, Any]:
        before = self.overlay_src()
        self.watch_progress()
        started = self.pick("explain_method", label)
        seconds = self.wait_for_overlay(label, before, started)
        self.wait_idle()
        return {"s": seconds, "compute_s": self.caption(), "progress_bar": self.saw_progress()}


def measure(labels: dict[str, str], out: Path) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    port = free_port()
    out.mkdir(parents=True, exist_ok=True)
    call_log = out / "dashboard-calls.log"
    call_log.unlink(missing_ok=True)
    launched = time.perf_counter()
    server = start_server(port, out / "dashboard-server.log", call_log)
    server_ready_s = time.perf_counter() - launched

    def calls() -> int:
        return len(call_log.read_text().splitlines()) if call_log.exists() else 0

    result: dict[str, Any] = {
        "methods": {},
        "date": time.strftime("%Y-%m-%d"),
        "server_ready_s": server_ready_s,
    }
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_context(viewport={"width": 1440, "height": 1000}).new_page()
                page.set_default_timeout(STEP_S * 1000)
                driver = Driver(page)
                # A fresh server (health check just answered): the frame, then the first heatmap.
                started = time.perf_counter()
                page.goto(f"http://127.0.0.1:{port}")
                page.get_by_role("heading", name="Explain").wait_for(timeout=STEP_S * 1000)
                result["first_frame_s"] = time.perf_counter() - started
                current = "Grad-CAM"  # the Explain page's default method
                result["first_page_s"] = driver.wait_for_overlay(current, None, started)
                driver.wait_idle()
                for phase in ("cold", "warm", "cached"):
                    if phase == "warm":  # another image: traced functions, nothing cached
                        before = driver.overlay_src()
                        clicked = driver.pick("sidebar_sample", 1)
                        result["image_switch_s"] = driver.wait_for_overlay(current, before, clicked)
                        driver.wait_idle()
                    # Start with a method other than the selected one (picking it is no click).
                    order = sorted(labels.items(), key=lambda item: item[1] == current)
                    for name, label in order:
                        if label == current:
                            continue  # measured by the page load / image switch above
                        timing = driver.method(label)
                        current = label
                        result["methods"].setdefault(name, {"label": label})[phase] = timing
                        print(f"{phase:6s} {label:26s} {timing}", flush=True)
                # A display control: overlay opacity, one step right then left, six times.
                before_caption = driver.caption()
                before_calls = calls()
                driver.watch_progress()
                slider = page.locator(".st-key-explain_alpha").get_by_role("slider")
                redraws = []
                for step in range(DISPLAY_CHANGES):
                    before_src = driver.overlay_src()
                    slider.focus()
                    clicked = time.perf_counter()
                    page.keyboard.press("ArrowRight" if step % 2 == 0 else "ArrowLeft")
                    page.wait_for_function(
                        """([selector, before]) => {
                            const images = document.querySelectorAll(selector);
                            return images.length >= 2 && images[1].complete
                                && images[1].src !== before;
                        }""",
                        arg=[OVERLAY_IMG, before_src or ""],
                        timeout=STEP_S * 1000,
                    )
                    redraws.append(time.perf_counter() - clicked)
                    driver.wait_idle()
                result["display_change"] = {
                    "s": statistics.median(redraws),
                    "all_s": redraws,
                    "model_calls": calls() - before_calls,
                    "progress_bar": driver.saw_progress(),
                    "caption_before": before_caption,
                    "caption_after": driver.caption(),
                    "recomputed": driver.saw_progress()
                    or before_caption != driver.caption()
                    or calls() != before_calls,
                }
                print(f"display change {result['display_change']}", flush=True)
            finally:
                browser.close()
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
    return result


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"Measured {result['date']} with `python benchmarks/dashboard_timing.py` (demo model, "
        "Explain page, headless Chromium on the same machine; wall seconds from the click to the "
        "new overlay in the page; compute = the library's time printed in the caption).",
        "",
        f"Fresh server: `streamlit run app.py` to its health check answering "
        f"{result['server_ready_s']:.1f} s (app.py's start-up hook warms the compute workers "
        "first: TensorFlow import, demo model, first sample, Grad-CAM); then the Explain page "
        f"opened: its frame in {result['first_frame_s']:.2f} s, the default Grad-CAM overlay in "
        f"{result['first_page_s']:.2f} s.",
        "",
        "| method | cold s (compute) | warm s (compute) | cached s |",
        "|---|---|---|---|",
    ]
    for info in result["methods"].values():
        cells = []
        for phase in ("cold", "warm", "cached"):
            timing = info.get(phase)
            if timing is None:
                cells.append("—")
            elif phase == "cached":
                cells.append(f"{timing['s']:.2f}")
            else:
                cells.append(f"{timing['s']:.2f} ({timing['compute_s'] or '?'})")
        lines.append(f"| {info['label']} | " + " | ".join(cells) + " |")
    warm = [i["warm"]["s"] for i in result["methods"].values() if "warm" in i]
    cached = [i["cached"]["s"] for i in result["methods"].values() if "cached" in i]
    if warm:
        lines += [
            "",
            f"Median click-to-heatmap: warm {statistics.median(warm):.2f} s, cached "
            f"{statistics.median(cached):.2f} s.",
        ]
    change = result.get("display_change")
    if change:
        verdict = (
            "no model call (no progress bar, same cached result re-rendered)"
            if not change["recomputed"]
            else "RECOMPUTED (a progress bar appeared or the result changed)"
        )
        lines += [
            "",
            f"Display change (overlay opacity, one step, {len(change['all_s'])} times): re-drawn "
            f"in {change['s']:.2f} s median; "
            f"{verdict}; {change['model_calls']} worker calls during it (service call log).",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--methods", default="", help="comma-separated registry names (all)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    labels = method_labels()
    wanted = set(filter(None, args.methods.split(",")))
    if wanted:
        labels = {k: v for k, v in labels.items() if k in wanted}
    result = measure(labels, args.out)
    result["load_average"] = "{:.2f} / {:.2f} / {:.2f}".format(*os.getloadavg())
    (args.out / "dashboard.json").write_text(json.dumps(result, indent=2))
    text = markdown(result) + f"\nLoad average at the end: {result['load_average']}.\n"
    (args.out / "dashboard.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
