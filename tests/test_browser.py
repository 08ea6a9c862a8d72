"""The MLflow UI in a real browser: a tiny search recorded on a real tracking server, then
headless Chromium (Debian's, driven by Playwright; never a downloaded browser) opens the UI and
finds the search's run, its child runs, its metrics, the architecture picture and a candidate's
picture. Screenshots are saved in
the test's temporary folder and their paths printed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import tiny_job
from mlflow.tracking import MlflowClient

from raynas.runs import run_search
from raynas.runs.jobs import parse_job

pytestmark = pytest.mark.integration

CHROMIUM_FLAGS = [  # Playwright adds --headless and a fresh profile folder itself
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def chromium_or_skip() -> str:
    """The system's chromium; without one the test skips, except in CI (``CI`` set), where
    ``.ci/run`` installs it and its absence is a failure."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    reason = ""
    if path is None:
        reason = "no chromium on PATH (install Debian's: apt-get install -y chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "the playwright package is missing (pip install -e '.[test]')"
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test: {reason}")
        pytest.skip(reason)
    assert path is not None
    return path


def test_mlflow_ui_shows_the_search_its_candidates_and_the_architecture(
    tmp_path: Path, mlflow_server: str
) -> None:
    chromium = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    config = parse_job(tiny_job(tmp_path, tracking={"tracking_uri": mlflow_server, "experiment": "ui",
                                                    "pictures": True}))
    result = run_search(config, echo=lambda _: None)
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("ui").experiment_id
    child_id = client.search_runs(
        [experiment], filter_string=f"tags.mlflow.parentRunId = '{result.run_id}' and run_name = 'epoch 000'"
    )[0].info.run_id

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)  # headless
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            # The UI polls the server: wait for the DOM and for the elements, never for network idle.
            page.goto(f"{mlflow_server}/#/experiments/{experiment}/runs", wait_until="domcontentloaded")
            page.get_by_text("tiny", exact=True).first.wait_for(timeout=90_000)
            page.get_by_text("3 matching runs").wait_for(timeout=30_000)  # the search and its 2 epochs
            row = page.locator("[role=row]", has_text="tiny").first
            row.locator("button").first.click()  # expand the parent: its child runs appear under it
            for child in ("epoch 000", "epoch 001"):
                page.get_by_text(child, exact=True).first.wait_for(timeout=30_000)
            runs_shot = tmp_path / "mlflow-runs.png"
            page.screenshot(path=str(runs_shot))

            page.goto(
                f"{mlflow_server}/#/experiments/{experiment}/runs/{result.run_id}/artifacts/architecture.png",
                wait_until="domcontentloaded",
            )
            image = page.locator("img[src^='data:image/png'], img[src^='blob:']").last
            image.wait_for(timeout=90_000)
            loaded = "img => img.complete && img.naturalWidth > 100"  # decoded, not a broken icon
            page.wait_for_function(loaded, arg=image.element_handle(), timeout=30_000)
            page.locator(":text-is('architecture.png'):visible").first.wait_for(timeout=10_000)
            image_shot = tmp_path / "mlflow-architecture.png"
            page.screenshot(path=str(image_shot))

            # The link raynas prints opens the search run in the model-training view, its metrics
            # listed: the per-epoch ones and the final result.
            assert result.run_link.startswith(mlflow_server)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(result.run_link, wait_until="domcontentloaded")
            for metric in ("valid_acc", "alpha_entropy", "final.valid_acc", "final.params"):
                page.get_by_text(metric, exact=True).first.wait_for(timeout=60_000)
            page.get_by_text("final.valid_acc", exact=True).first.scroll_into_view_if_needed()
            assert page.get_by_text("Evaluation runs", exact=True).count() == 0  # not the GenAI view
            metrics_shot = tmp_path / "mlflow-metrics.png"
            page.screenshot(path=str(metrics_shot))

            # A candidate (the child run of epoch 000) shows its own architecture's picture.
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(
                f"{mlflow_server}/#/experiments/{experiment}/runs/{child_id}/artifacts/architecture.png",
                wait_until="domcontentloaded",
            )
            image = page.locator("img[src^='data:image/png'], img[src^='blob:']").last
            image.wait_for(timeout=90_000)
            page.wait_for_function(loaded, arg=image.element_handle(), timeout=30_000)
            candidate_shot = tmp_path / "mlflow-candidate.png"
            page.screenshot(path=str(candidate_shot))
        finally:
            browser.close()
    for shot in (runs_shot, image_shot, metrics_shot, candidate_shot):
        assert shot.stat().st_size > 10_000
        print(f"screenshot: {shot}")
