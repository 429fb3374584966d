"""Screenshots of kdhub runs in the MLflow UI, for docs/mlflow.md (headless Chromium driven by Playwright).

    python scripts/mlflow_screenshots.py [--out docs/figures] [--keep DIR] [--epochs N]

Runs, in a temporary folder with its own SQLite store, what a user of docs/mlflow.md runs: ``kdhub demo``
(its own runs: the teacher, vanilla and KD students over its seeds, the first KD student registered as
``digits-kd-student``), ``kdhub compare`` of the demo's students and ``kdhub study`` of
``examples/studies/digits_kd_temperature.yaml``. Nothing is added to the store in a way those commands
do not. Then it starts ``mlflow ui`` on the store, opens the pages docs/mlflow.md shows in headless
Chromium and saves them as ``<out>/mlflow_*.png``. It checks that each page shows what the page says
(the run list's accuracy view, datasets, logged model, registered model, description) and exits 1
naming the page when one does not.

Needs ``pip install playwright`` and Chromium (Debian: ``apt-get install chromium``; the binary is
taken from $CHROMIUM or /usr/bin/chromium, no browser download). About five minutes on two cores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
MODEL = "digits-kd-student"
STUDY = "examples/studies/digits_kd_temperature.yaml"
CLOSED_ASSISTANT = (
    "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
    "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
)


def kdhub(folder: Path, *args: str) -> str:
    """Run a kdhub command in ``folder`` as a user would (its command line becomes the runs' Source); its stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "kdhub.cli", *args], cwd=folder, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"kdhub {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def demo_runs(uri: str) -> dict[str, str]:
    """The demo's run ids by run name without ``demo-`` (``teacher``, ``vanilla-s0``, ``kd-s0`` ...)."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("kdhub-demo")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    return {r.info.run_name.removeprefix("demo-"): r.info.run_id for r in runs}


def build_store(folder: Path, epochs: int | None) -> dict[str, Any]:
    """``kdhub demo``, ``kdhub compare`` of its students and ``kdhub study`` of an example, in ``folder``."""
    uri = f"sqlite:///{folder / 'mlflow.db'}"  # a SQLite store keeps artifacts in ./mlruns (the folder)
    ids: dict[str, Any] = {"uri": uri}
    demo = kdhub(folder, "demo", "--tracking-uri", uri, *(["--epochs", str(epochs)] if epochs else []))
    (folder / "demo.txt").write_text(demo)
    ids.update(demo_runs(uri))
    vanilla = sorted(k for k in ids if k.startswith("vanilla-s"))
    kd = sorted(k for k in ids if k.startswith("kd-s"))
    out = kdhub(
        folder, "compare", "--baseline", ",".join(ids[k] for k in vanilla), *(ids[k] for k in kd), "--tracking-uri", uri
    )
    ids["compare"] = out.rsplit("logged as MLflow run ", 1)[1].split()[0]
    (folder / STUDY).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / STUDY, folder / STUDY)  # typed as in the example's own first line
    out = kdhub(folder, "study", STUDY, "--tracking-uri", uri)
    ids["study"] = out.split("parent run ", 1)[1].split()[0]
    return ids


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def mlflow_ui(uri: str, folder: Path) -> Iterator[str]:
    """``mlflow ui`` on the store, stopped (by its process id) on exit; yields its base URL."""
    port = free_port()
    log = (folder / "ui.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)],
        cwd=folder,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(f"{base}/health", timeout=2).status == 200:
                    break
            if server.poll() is not None:
                raise SystemExit(f"mlflow ui exited: see {folder / 'ui.log'}")
            time.sleep(0.5)
        else:
            raise SystemExit(f"mlflow ui did not start within 2 minutes: see {folder / 'ui.log'}")
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def experiment_id(uri: str, name: str) -> str:
    import mlflow

    return mlflow.MlflowClient(uri).get_experiment_by_name(name).experiment_id


def dataset_digest(uri: str, run_id: str, context: str) -> str:
    import mlflow

    for item in mlflow.MlflowClient(uri).get_run(run_id).inputs.dataset_inputs:
        if any(t.key == "mlflow.data.context" and t.value == context for t in item.tags):
            return str(item.dataset.digest)
    raise SystemExit(f"run {run_id} has no {context} dataset input")


def model_id(uri: str, run_id: str) -> str:
    import mlflow

    return mlflow.MlflowClient(uri).get_run(run_id).outputs.model_outputs[0].model_id


class Shooter:
    """Opens pages, waits for what they should show, saves screenshots and records what was missing."""

    def __init__(self, page: Any, base: str, out: Path) -> None:
        self.page, self.base, self.out = page, base, out
        self.missing: list[str] = []
        self.saved: list[Path] = []
        self.where = ""

    def open(self, route: str, expect: list[str], height: int = 1000, width: int = 1600) -> None:
        self.page.set_viewport_size({"width": width, "height": height})
        joiner = "&" if "?" in route else "?"
        self.where = route
        self.page.goto(f"{self.base}/#{route}{joiner}workflowType=machine_learning", wait_until="load")
        self.expect(expect)

    def expect(self, texts: list[str], timeout: float = 60.0) -> None:
        for text in texts:
            try:
                self.page.get_by_text(text, exact=False).first.wait_for(timeout=timeout * 1000)
            except Exception:
                self.missing.append(f"{self.where}: {text!r}")
        time.sleep(1.5)

    def click(self, text: str, exact: bool = True, nth: int = 0) -> None:
        try:
            self.page.get_by_text(text, exact=exact).nth(nth).click(timeout=30_000)
        except Exception:
            self.missing.append(f"{self.where}: click {text!r}")
        time.sleep(1.5)

    def search(self, placeholder: str, text: str) -> None:
        try:
            self.page.get_by_placeholder(placeholder).first.fill(text, timeout=30_000)
        except Exception:
            self.missing.append(f"{self.where}: search {placeholder!r}")

    def charts_drawn(self, count: int = 1) -> None:
        """Wait until ``count`` charts have lines (the UI draws them after fetching the histories)."""
        try:
            self.page.wait_for_function(
                f"document.querySelectorAll('.js-plotly-plot .scatterlayer .trace').length >= {count}",
                timeout=90_000,
            )
        except Exception:
            self.missing.append(f"{self.where}: {count} drawn chart(s)")
        time.sleep(2)

    def shot(self, name: str) -> None:
        from PIL import Image

        path = self.out / f"mlflow_{name}.png"
        self.page.screenshot(path=str(path))
        with Image.open(path) as image:  # 256 colours: a third of the size, the same to the eye for a UI
            small = image.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
        small.save(path, optimize=True)
        self.saved.append(path)


def take(ids: dict[str, Any], base: str, out: Path) -> Shooter:
    from playwright.sync_api import sync_playwright

    uri = ids["uri"]
    demo = experiment_id(uri, "kdhub-demo")
    studies = experiment_id(uri, "kdhub-studies")
    compare = experiment_id(uri, "kdhub-demo-compare")
    kd_run = ids["kd-s0"]  # the registered KD student
    kd_model = model_id(uri, kd_run)
    train_digest = dataset_digest(uri, kd_run, "train")
    val_digest = dataset_digest(uri, kd_run, "val")
    run = f"/experiments/{demo}/runs/{kd_run}"
    chromium = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 1600, "height": 1000}, device_scale_factor=1)
        page.add_init_script(CLOSED_ASSISTANT)  # the UI's assistant panel would cover a third of every page
        s = Shooter(page, base, out)

        # the run list as a first visit shows it, then its "Accuracy" view, one click away under Views
        s.open(f"/experiments/{demo}/runs", ["demo-kd-s0", "demo-vanilla-s0", "demo-teacher", "digits ("], 700, 1900)
        try:
            page.get_by_test_id("saved-views-trigger").click(timeout=30_000)  # "Views" above the run list
        except Exception:
            s.missing.append(f"{s.where}: the Views menu")
        time.sleep(1)
        s.click("Accuracy")
        s.expect(["test/acc_last", "test/acc_at_best_val", "test/agreement/pa"])
        if "viewStateShareKey=kdhub-accuracy" not in page.url:
            s.missing.append(f"{s.where}: Views > Accuracy did not open ?viewStateShareKey=kdhub-accuracy")
        # the address kdhub demo prints (the menu's link drops the Model training layout the other pages show)
        columns = ["test/acc_last", "test/acc_at_best_val", "test/agreement/pa"]
        s.open(f"/experiments/{demo}/runs?viewStateShareKey=kdhub-accuracy", ["demo-kd-s0", *columns], 700, 1900)
        s.shot("runs")
        s.open(run, ["Distils teacher", "Result:", "Registered models", MODEL, "Logged models (1)"], 1900)
        s.click("Show more")
        s.expect(["Registered as"])
        s.shot("run_overview")
        s.open(run, [f"digits ({train_digest})"])
        s.click(f"digits ({train_digest})")
        s.click(f"digits ({val_digest})", exact=False)  # in the drawer: the validation split
        s.expect(["indices digest", val_digest])
        s.shot("run_dataset")
        s.open(f"{run}/model-metrics", ["test"])
        s.search("Search metric charts", "acc")
        s.charts_drawn(4)
        s.shot("run_charts")
        s.open(f"{run}/artifacts", ["tables", "figures"])
        for folder in ("tables", "test"):
            s.click(folder)
        s.click("per_class_accuracy.json")
        s.expect(["student", "teacher", "count"])
        s.shot("run_table")
        s.open(f"{run}/artifacts", ["figures"])
        for folder in ("figures", "test"):
            s.click(folder)
        s.click("per_class_accuracy.png")
        time.sleep(3)
        s.shot("run_figure")
        s.open(
            f"/experiments/{demo}/models/{kd_model}",
            ["student", "Distils teacher", "test/acc_last", MODEL, "Datasets used", f"digits (#{train_digest})"],
        )
        s.shot("logged_model")
        s.open(f"/models/{MODEL}", ["Version 1", "test_acc", "cnn(width=32)"])
        s.shot("registry")
        s.open(f"/models/{MODEL}/versions/1", ["Distils teacher", "teacher run", "kdhub.run"], 1100)
        s.shot("registered_model")
        s.open(f"/experiments/{demo}/runs?compareRunsMode=CHART", ["demo-kd-s0", "loss/ce"])
        s.search("Search metric charts", "test/acc")
        s.charts_drawn(3)
        s.shot("compare_charts")
        s.open(f"/experiments/{compare}/runs/{ids['compare']}/artifacts", ["figures"])
        s.click("figures")
        s.click("compare", nth=1)  # figures/compare (compare/ holds the text report)
        s.click("delta_acc.png")
        time.sleep(3)
        s.shot("compare_run")
        s.open(f"/experiments/{studies}/runs?viewStateShareKey=kdhub-accuracy", ["digits-kd-temperature"])
        try:  # the parent run's expander
            page.locator("button[data-component-id*='runnamecellrenderer']").first.click(timeout=30_000)
        except Exception:
            s.missing.append(f"{s.where}: the study's expander")
        s.expect(["teacher-s0", "vanilla-s0", "kd[temperature=4]-s1", "test/acc_last"])
        s.shot("study")
        s.open(f"/experiments/{studies}/runs/{ids['study']}", ["digits-kd-temperature", "Metrics"], 1100)
        s.search("Search metrics", "acc_last")
        s.expect(["kd temperature 4/test/acc_last_mean", "kd temperature 4/test/acc_last_std"])
        s.shot("study_parent")
        browser.close()
    return s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "figures"), help="folder of the PNG files")
    parser.add_argument(
        "--keep", metavar="DIR", help="build the store in DIR and keep it; reused if it exists (default: temp folder)"
    )
    parser.add_argument("--epochs", type=int, default=None, help="epochs of the demo's runs (default: the demo's own)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    folder = Path(args.keep).resolve() if args.keep else Path(tempfile.mkdtemp(prefix="kdhub-ui-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        if args.keep and (folder / "ids.json").exists():  # a kept store: only the screenshots again
            ids = json.loads((folder / "ids.json").read_text())
        else:
            ids = build_store(folder, args.epochs)
            (folder / "ids.json").write_text(json.dumps(ids, indent=2))
        with mlflow_ui(ids["uri"], folder) as base:
            shooter = take(ids, base, out)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    for path in shooter.saved:
        print(f"saved {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    for item in shooter.missing:
        print(f"MISSING {item}", file=sys.stderr)
    return 1 if shooter.missing else 0


if __name__ == "__main__":
    sys.exit(main())
