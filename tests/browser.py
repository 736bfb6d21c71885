"""A headless Chromium driven over the DevTools protocol (one websocket, no driver binary).

Used by ``tests/test_ui.py`` to read the MLflow UI the way a researcher sees it, and by
``python -m tests.browser URL --screenshots docs/img`` to take the README's screenshots of the same pages.
The MLflow UI is a React app: every check waits for a condition in the page, never for a fixed time.
"""

from __future__ import annotations

import itertools
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from base64 import b64decode
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-allow-origins=*",
    "--hide-scrollbars",
)


def ensure_chromium() -> str | None:
    """The Chromium binary, installed from the system packages when missing and apt is available (CI runs
    the README's test line on a bare image); None when it cannot be had (the caller skips, saying why)."""
    found = shutil.which("chromium") or (CHROMIUM if Path(CHROMIUM).exists() else None)
    if found:
        return found
    if shutil.which("apt-get") is None:
        return None
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
        if subprocess.run(cmd, capture_output=True, timeout=900).returncode != 0:
            return None
    return shutil.which("chromium")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Browser:
    """One Chromium page: ``goto``, ``wait(js)``, ``text()``, ``screenshot(path)``."""

    def __init__(self, binary: str, width: int = 1280, height: int = 800):
        import websocket

        self.profile = tempfile.mkdtemp(prefix="mcu-chromium-")
        port = _free_port()
        self.proc = subprocess.Popen(
            [
                binary,
                *FLAGS,
                f"--remote-debugging-port={port}",
                f"--user-data-dir={self.profile}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                    pages = [t for t in json.load(r) if t["type"] == "page"]
                if pages:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not open its DevTools port within 60 s")
            time.sleep(0.2)
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=60)
        self._ids = itertools.count(1)
        self.call("Page.enable")
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )

    def call(self, method: str, **params):
        msg_id = next(self._ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:  # events arrive interleaved with answers; only the answer to this call matters
            msg = json.loads(self.ws.recv())
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def js(self, expression: str):
        out = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in out:
            raise RuntimeError(f"{expression[:80]}: {out['exceptionDetails'].get('text')}")
        return out["result"].get("value")

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def wait(self, expression: str, timeout: float = 60, what: str = "") -> object:
        """Poll a JavaScript expression until it is truthy; the page's text in the error when it never is."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = self.js(expression)
            except RuntimeError:
                value = None
            if value:
                return value
            time.sleep(0.25)
        raise TimeoutError(
            f"waited {timeout:.0f} s for {what or expression}; the page shows:\n{self.text()[:3000]}"
        )

    def wait_text(self, needle: str, timeout: float = 60) -> None:
        self.wait(
            f"document.body && document.body.innerText.includes({json.dumps(needle)})",
            timeout,
            f"{needle!r} on the page",
        )

    def text(self) -> str:
        return self.js("document.body ? document.body.innerText : ''") or ""

    def click_text(self, needle: str, selector: str = "a, button, [role=tab], [role=menuitem]") -> None:
        """Click the first visible element matching ``selector`` whose text is ``needle``."""
        found = self.wait(
            f"""(() => {{ const el = [...document.querySelectorAll({json.dumps(selector)})]
                 .find(e => e.innerText && e.innerText.trim() === {json.dumps(needle)} && e.offsetParent);
                 if (el) {{ el.click(); return true; }} return false; }})()""",
            what=f"a clickable {needle!r}",
        )
        assert found

    def close_panels(self) -> None:
        """Close side panels and banners that cover the page (MLflow's assistant, the shared-view banner)."""
        self.js(
            """[...document.querySelectorAll('button[aria-label="Close"], button[aria-label="Hide banner"]')]
               .forEach(b => b.click())"""
        )
        self.wait(
            "!document.querySelector('button[aria-label=\"Change assistant provider\"]')", 10, "panels closed"
        )

    def screenshot(self, path: str | Path, optimise: bool = False) -> Path:
        """A PNG of the viewport; ``optimise``: a 256-colour palette (a screenshot of a web page loses
        nothing visible and shrinks several times)."""
        data = b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        Path(path).write_bytes(data)
        if optimise:
            from PIL import Image

            with Image.open(path) as im:
                im.convert("RGB").quantize(256).save(path, optimize=True)
        return Path(path)

    def close(self) -> None:
        try:
            if getattr(self, "ws", None):
                self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            shutil.rmtree(self.profile, ignore_errors=True)


# -- the pages a researcher opens, shared by tests/test_ui.py and the README's screenshots --------------
def open_runs(b: Browser, link: str, last_name: str) -> str:
    """The runs table at the sweep's printed URL, once ``last_name`` and the avg_gap column are shown."""
    b.goto(link)
    b.wait_text(last_name)
    b.close_panels()
    b.wait_text("avg_gap")
    return b.text()


def open_run(b: Browser, run_url: str, needle: str) -> str:
    b.goto(run_url)
    b.wait_text(needle)
    b.close_panels()
    return b.text()


def open_artifact(b: Browser, run_url: str, path: str, listed: tuple[str, ...]) -> None:
    """A run's artifact (an image), with the names in ``listed`` shown in its artifact tree."""
    b.goto(run_url.replace("?", f"/artifacts/{path}?") if "?" in run_url else f"{run_url}/artifacts/{path}")
    for name in listed:
        b.wait_text(name)
    b.close_panels()
    b.wait("[...document.images].some(i => i.complete && i.naturalWidth > 200)", what=f"{path} shown")


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.browser URL --screenshots DIR``: the README's screenshots of a finished sweep, from
    the runs URL it printed (the same pages, in the same way, as tests/test_ui.py)."""
    import argparse
    import re

    from mlflow.tracking import MlflowClient

    p = argparse.ArgumentParser(prog="python -m tests.browser", description=main.__doc__.splitlines()[0])
    p.add_argument("url", help="the 'MLflow runs, best first' URL a sweep printed")
    p.add_argument(
        "--screenshots", required=True, help="folder for runs.png, trial.png, parent.png, report.png"
    )
    args = p.parse_args(argv)
    base, exp = re.match(r"(https?://[^/#]+)/#/experiments/(\d+)/", args.url).groups()
    runs = MlflowClient(base).search_runs([exp], max_results=1000)
    parent = next(r for r in runs if r.data.tags.get("mcu.kind") == "sweep")
    trials = sorted((r for r in runs if "avg_gap" in r.data.metrics), key=lambda r: r.data.metrics["avg_gap"])
    run_url = lambda r: f"{base}/#/experiments/{exp}/runs/{r.info.run_id}?workflowType=machine_learning"  # noqa: E731
    out = Path(args.screenshots)
    out.mkdir(parents=True, exist_ok=True)
    b = Browser(ensure_chromium() or CHROMIUM)
    try:
        open_runs(b, args.url, trials[-1].info.run_name)
        b.screenshot(out / "runs.png", optimise=True)
        open_run(b, run_url(trials[0]), "Avg. Gap to Retrain")
        b.screenshot(out / "trial.png", optimise=True)
        open_run(b, run_url(parent), "trials completed")
        b.screenshot(out / "parent.png", optimise=True)
        open_artifact(b, run_url(parent), "report/sweep.png", ("best_config.yaml", "report.md"))
        b.screenshot(out / "report.png", optimise=True)
    finally:
        b.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
