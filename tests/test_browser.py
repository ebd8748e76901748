"""The report, the JupyterLab explorer and the Voila app as people see them, in a real headless Chromium.

Driven with Selenium through Debian's ``chromium`` and ``chromium-driver``. Where they are missing the tests skip
with the reason; ``CEN_LAB_REQUIRE_BROWSER=1`` (set by ``.ci/run``, which installs them) turns that skip into a
failure, so CI always tests in a browser. Every server a test starts is stopped by that test, by its PID (its
process group: the server and its kernels), also when the test fails.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from cen_lab.views.app import free_port
from cen_lab.views.reports import NOTEBOOK_DIR

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# what a headless Chromium needs here as root, and what keeps it from calling Google's services
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,1000")
BLOCKED = ["http://*", "https://*", "ws://*", "wss://*"]  # everything outside file:// in the report test


def _missing() -> str | None:
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (it is in the dev extra: make test installs it)"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not Path(path).is_file():
            return f"{path} is missing: apt-get install chromium chromium-driver (.ci/run does this) ({package})"
    return None


@pytest.fixture
def browser(tmp_path):
    """A fresh headless Chromium with console and network logs on; quit after the test."""
    reason = _missing()
    if reason:
        if os.environ.get("CEN_LAB_REQUIRE_BROWSER") == "1":
            pytest.fail(f"CEN_LAB_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, script: str, timeout: float = 60, what: str = "") -> object:
    """Poll a JavaScript expression until it is truthy; return its value or fail naming ``what``."""
    end = time.monotonic() + timeout
    while True:
        value = driver.execute_script(f"return ({script});")
        if value:
            return value
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what or script}")
        time.sleep(0.25)


def _console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def _network(driver) -> tuple[list[str], list[str]]:
    """(URLs requested, failed loads with their error) since the last call, from the performance log."""
    requested, failed = [], []
    urls = {}
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        params = msg.get("params", {})
        if msg["method"] == "Network.requestWillBeSent":
            urls[params["requestId"]] = params["request"]["url"]
            requested.append(params["request"]["url"])
        elif msg["method"] == "Network.loadingFailed" and not params.get("canceled"):
            failed.append(f"{urls.get(params['requestId'], params['requestId'])}: {params.get('errorText')}"
                          f" {params.get('blockedReason', '')}".strip())
    return requested, failed


# -- the report from file://, with the network blocked ---------------------------------------------------------

PAGE_CHECKS = """() => {
  const plots = Array.from(document.querySelectorAll('.js-plotly-plot, .plotly-graph-div'));
  const images = Array.from(document.images);
  return {
    text: document.body.innerText,
    plots: plots.length,
    drawn: plots.filter(p => p.querySelector('.main-svg')).length,
    images: images.length,
    broken: images.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src.slice(0, 80)),
    math: document.querySelectorAll('.MathJax, .MathJax_Display, .MathJax_Preview').length,
    mathjax_busy: !!(window.MathJax && window.MathJax.Hub &&
                     (window.MathJax.Hub.queue.pending || window.MathJax.Hub.queue.running)),
  };
}"""


def test_every_report_page_renders_offline(tiny_report, browser):
    out = tiny_report.out_dir
    assert tiny_report.ok, tiny_report.failures
    pages = [out / "index.html", *(out / f"{n}.html" for n in tiny_report_notebooks(out)),
             *sorted((out / "figures").rglob("*.html"))]
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.setBlockedURLs", {"urls": BLOCKED})
    for page in pages:
        _console_errors(browser), _network(browser)  # empty the logs of the page before
        browser.get(page.as_uri())
        # MathJax typesets after load: wait until it has started and its queue is empty
        _wait(browser, "document.readyState === 'complete' && !(window.MathJax && window.MathJax.Hub && "
                       "(window.MathJax.Hub.queue.pending || window.MathJax.Hub.queue.running))",
              what=f"{page.name} to load and typeset")
        state = browser.execute_script(f"return ({PAGE_CHECKS})();")
        requested, failed = _network(browser)
        name = str(page.relative_to(out))
        assert not failed, f"{name}: failed loads {failed}"
        # chrome:// is the browser's own resources (Chromium 150 loads two icons of its own UI on index.html)
        assert not [u for u in requested if not u.startswith(("file:", "data:", "blob:", "chrome:"))], \
            f"{name}: {requested}"
        assert not _console_errors(browser), f"{name}: console errors {_console_errors(browser)}"
        assert state["drawn"] == state["plots"], f"{name}: {state['plots'] - state['drawn']} plotly plots not drawn"
        assert not state["broken"], f"{name}: broken images {state['broken']}"
        if page.name == "theorem1.html":
            assert state["math"] > 0 and "$$" not in state["text"] and "\\Phi" not in state["text"], \
                "theorem1.html: TeX left raw (MathJax did not typeset)"
        if page.name in ("quickstart.html", "exchange_dynamics.html"):
            assert state["plots"] >= 1 and state["images"] >= 3, f"{name}: figures missing {state}"
        if page.name == "index.html":
            assert "Settings" in state["text"] and "tiny" in state["text"]


def tiny_report_notebooks(out: Path) -> list[str]:
    from cen_lab.views.reports import REPORT_NOTEBOOKS

    return [n for n in REPORT_NOTEBOOKS if (out / f"{n}.html").is_file()]


# -- servers: JupyterLab and the Voila app ---------------------------------------------------------------------


@contextmanager
def _server(cmd: list[str], ready_url: str, cwd: Path, log_path: Path, env: dict | None = None, timeout: float = 90):
    """Start ``cmd`` in its own process group, wait until ``ready_url`` answers 200, and stop it (the whole
    group, by the server's PID) when the block ends, whatever happened inside it."""
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **(env or {})}, stdout=log_file,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        end = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{cmd[2:4]} exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(ready_url, timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > end:
                pytest.fail(f"{cmd[2:4]} did not answer within {timeout:.0f} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield proc
    finally:
        _stop(proc)
        assert proc.poll() is not None


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)  # the group the server leads: the server and the kernels it started
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


EXPLORER_WIDGETS = """() => {
  const q = s => document.querySelectorAll(s).length;
  return {slider: q('.widget-slider .noUi-handle'), play: q('.widget-play button, .jupyter-widgets.widget-play'),
          dropdowns: q('.widget-dropdown select'), outputs: q('.widget-output'),
          images: Array.from(document.querySelectorAll('.widget-output img')).filter(i => i.naturalWidth > 0).length,
          error: document.body.innerText.includes('Error displaying widget')};
}"""
OUTPUT_IMAGES = "Array.from(document.querySelectorAll('.widget-output img')).map(i => i.src.length + ':' + i.src.slice(-64))"


def _check_explorer(driver, where: str) -> None:
    """The explorer's real widgets are there, and moving the slider with the keyboard redraws the pictures."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    _wait(driver, f"(({EXPLORER_WIDGETS})()).images >= 3", timeout=150, what=f"the explorer's pictures in {where}")
    state = driver.execute_script(f"return ({EXPLORER_WIDGETS})();")
    assert not state["error"], f"{where}: 'Error displaying widget'"
    assert state["slider"] == 1 and state["play"] >= 1 and state["dropdowns"] == 3, f"{where}: {state}"
    before = driver.execute_script(f"return {OUTPUT_IMAGES};")
    handle = driver.find_element(By.CSS_SELECTOR, ".widget-slider .noUi-handle")
    handle.send_keys(Keys.ARROW_RIGHT)
    readout = ".widget-slider .widget-readout"
    _wait(driver, f"document.querySelector('{readout}').innerText.trim() === '1'", timeout=30,
          what=f"the slider to move to index 1 in {where}")
    _wait(driver, f"JSON.stringify({OUTPUT_IMAGES}) !== {json.dumps(json.dumps(before))} && "
                  f"({OUTPUT_IMAGES}).length >= 3", timeout=60, what=f"the pictures to change in {where}")
    label = driver.execute_script("return Array.from(document.querySelectorAll('.widget-label'))"
                                  ".map(e => e.innerText).filter(t => t.startsWith('step '))")
    assert label and label[0] != "step 0", f"{where}: step label {label}"


def _jupyter_env(tmp_path: Path) -> dict:
    # a private Jupyter config, data-runtime and settings home: nothing from the user's own set-up leaks in
    return {"JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter-rt"),
            "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "lab-settings"),
            "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "lab-workspaces"), "CEN_LAB_PROGRESS": "text"}


def test_explorer_notebook_in_jupyterlab(browser, tmp_path):
    """explorer.ipynb as committed, opened in JupyterLab, run all: it trains a tiny run and shows live widgets."""
    nb_dir = tmp_path / "notebooks"
    nb_dir.mkdir()
    shutil.copy(NOTEBOOK_DIR / "explorer.ipynb", nb_dir)  # its runs_dir "../runs" lands in tmp_path/runs
    port, token = free_port(), "cen-lab-test-token"
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={nb_dir}",
           "--LabApp.expose_app_in_browser=True", "--allow-root"]
    with _server(cmd, f"http://127.0.0.1:{port}/api/status?token={token}", nb_dir, tmp_path / "lab.log",
                 env=_jupyter_env(tmp_path)):
        browser.get(f"http://127.0.0.1:{port}/lab/tree/explorer.ipynb?token={token}")
        panel = ("!!window.jupyterapp && Array.from(jupyterapp.shell.widgets('main'))"
                 ".some(w => w.sessionContext && w.title.label === 'explorer.ipynb')")
        _wait(browser, panel, timeout=90, what="JupyterLab to open explorer.ipynb")
        # JupyterLab's current notebook follows the keyboard focus, which a headless window does not give the
        # panel it opens (JupyterLab 4.6): click into the notebook, as a user would, before running it
        browser.find_element("css selector", ".jp-NotebookPanel .jp-Notebook").click()
        ready = ("jupyterapp.shell.currentWidget && jupyterapp.shell.currentWidget.sessionContext"
                 " && jupyterapp.shell.currentWidget.sessionContext.session"
                 " && jupyterapp.shell.currentWidget.sessionContext.session.kernel"
                 " && jupyterapp.shell.currentWidget.sessionContext.session.kernel.status === 'idle'")
        _wait(browser, ready, timeout=90, what="explorer.ipynb to be the current notebook with an idle kernel")
        browser.execute_script("jupyterapp.commands.execute('notebook:run-all-cells');")
        _check_explorer(browser, "JupyterLab")
        errors = [e for e in _console_errors(browser) if "favicon" not in e]
        assert not [e for e in errors if "widget" in e.lower()], errors
    assert (tmp_path / "runs").is_dir()  # the notebook trained its tiny run where its parameters say


def test_explorer_web_app_with_voila(browser, tiny_run, tmp_path):
    """`cen-lab explore RUN_DIR` serves the same explorer through Voila on 127.0.0.1, loading nothing from outside."""
    port, token = free_port(), "cen-lab-test-token"
    cmd = [sys.executable, "-m", "cen_lab", "explore", str(tiny_run.path), f"--port={port}", f"--token={token}"]
    url = f"http://127.0.0.1:{port}/?token={token}"
    with _server(cmd, f"http://127.0.0.1:{port}/voila/static/voila.js", tmp_path, tmp_path / "voila.log",
                 env=_jupyter_env(tmp_path)) as proc:
        _network(browser)
        browser.get(url)
        _check_explorer(browser, "the Voila app")
        requested, failed = _network(browser)
        outside = [u for u in requested if not u.startswith((f"http://127.0.0.1:{port}/", f"ws://127.0.0.1:{port}/",
                                                             "data:", "blob:"))]
        assert not outside and not failed, (outside, failed)
        assert not _console_errors(browser)
        assert "import" not in browser.find_element("css selector", "body").text  # Voila hides the code
        # the token is required: without it (or with a wrong one) the page sends you to the login form
        for query in ("", "?token=wrong"):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/{query}", timeout=10) as r:
                assert "/login" in r.geturl()
    assert proc.poll() is not None
