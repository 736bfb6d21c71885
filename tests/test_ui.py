"""The MLflow UI of a finished smoke sweep, in a real headless Chromium, at the URL the sweep prints.

A researcher clicks that URL and must see the trials by name, avg_gap visible, best first; the sweep's
own run must hold the summary and the report. With ``MCU_SCREENSHOTS=DIR`` the same pages are saved as
the README's screenshots (1280×800 PNG).
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import pytest

from mcu_dist import sweep as sweep_cli
from tests.browser import Browser, ensure_chromium, open_artifact, open_run, open_runs
from tests.ray_cluster import stop_group
from tests.test_sweep import _mlflow_server, _runs

pytestmark = pytest.mark.slow
SHOTS = os.environ.get("MCU_SCREENSHOTS")


@pytest.fixture(scope="module")
def browser():
    pytest.importorskip("websocket", reason="websocket-client (the dev extra) drives Chromium")
    binary = ensure_chromium()
    if binary is None:
        pytest.skip("no Chromium: /usr/bin/chromium is missing and apt-get cannot install it here")
    b = Browser(binary)
    try:
        yield b
    finally:
        b.close()


@pytest.fixture(scope="module")
def finished_sweep(ray_cluster, tmp_path_factory):
    """A 3-trial smoke sweep logged to a real MLflow server; its printed output and the server's URL."""
    tmp = tmp_path_factory.mktemp("ui")
    server, url = _mlflow_server(tmp)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            code = sweep_cli.main(
                [
                    "--smoke-test",
                    "--num-samples",
                    "3",
                    "--storage",
                    str(tmp / "storage"),
                    "--tracking-uri",
                    url,
                ]
            )
        assert code == 0, out.getvalue()[-3000:]
        yield url, out.getvalue()
    finally:
        stop_group(server)


def _shot(browser: Browser, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        browser.screenshot(Path(SHOTS) / name, optimise=True)


def test_the_printed_url_lists_trials_by_name_best_first_with_avg_gap(browser, finished_sweep):
    url, printed = finished_sweep
    last = printed.strip().splitlines()[-1]
    assert last.startswith("MLflow runs, best first: http://"), last
    link = last.split(": ", 1)[1]
    assert link.startswith(url)
    client, _, children = _runs(url, "mcu-default")
    ranked = [r.info.run_name for r in sorted(children, key=lambda r: r.data.metrics["avg_gap"])]
    assert len(ranked) == 3 and all(" · " in name for name in ranked)  # named by content, not trial-<hash>

    text = open_runs(browser, link, ranked[-1])
    # best first: the names appear in the table in avg_gap order, and the avg_gap column is there
    assert sorted(ranked, key=text.index) == ranked
    best = min(children, key=lambda r: r.data.metrics["avg_gap"])
    assert f"{best.data.metrics['avg_gap']:.4f}"[:5] in text
    assert "Observability" not in text  # the model-training view's sidebar, not GenAI's (traces, judges)
    _shot(browser, "runs.png")


def test_the_sweep_run_shows_its_summary_and_report(browser, finished_sweep):
    url, _ = finished_sweep
    client, parents, children = _runs(url, "mcu-default")
    parent = parents[0]
    from mcu_dist.tracking import Tracker

    tracker = Tracker(url, "mcu-default")
    text = open_run(browser, tracker.run_url(parent.info.run_id), "trials completed")
    assert "3 of 3 trials completed" in text and "Best config" in text
    _shot(browser, "parent.png")
    listed = ("report.md", "best_config.yaml", "trials.csv", "paths.png")
    open_artifact(browser, tracker.run_url(parent.info.run_id), "report/sweep.png", listed)
    _shot(browser, "report.png")


def test_a_trial_run_leads_with_its_answer(browser, finished_sweep):
    url, _ = finished_sweep
    client, _, children = _runs(url, "mcu-default")
    best = min(children, key=lambda r: r.data.metrics["avg_gap"])
    from mcu_dist.tracking import Tracker

    text = open_run(browser, Tracker(url, "mcu-default").run_url(best.info.run_id), "Avg. Gap to Retrain")
    metrics = text[text.index("Metrics (") :]
    assert metrics.index("avg_gap") < metrics.index("path/")  # the final metrics lead, the path's follow
    assert "forget classes:1" in text or "digits" in text  # datasets as inputs
    _shot(browser, "trial.png")
