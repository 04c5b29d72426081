"""The browser live view end to end in a real headless Chromium, and Ctrl-C on a live run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest

from .conftest import TORCHSCRIPT, VIDEO, need


def chromium_driver():  # noqa: ANN201
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not browser or not driver:
        pytest.fail("chromium and chromedriver are needed (scripts/test.sh installs Debian's packages)", pytrace=False)
    os.environ["SE_OFFLINE"] = "true"  # never let Selenium Manager try to download anything
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1000,800"):  # fmt: skip
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=opts)


def wait_for(predicate, timeout: float, what: str):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def test_live_view_in_chromium_and_ctrl_c(tmp_path: Path) -> None:
    out, jsonl = tmp_path / "live.mp4", tmp_path / "live.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "detector", "-q", "run", str(need(VIDEO)), "--model", str(TORCHSCRIPT),
         "--serve", "127.0.0.1:0", "--hud", "--out", str(out), "--json", str(jsonl)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    driver = None
    try:
        line = wait_for(lambda: proc.stdout.readline(), 60, "the live view URL")  # type: ignore[union-attr]
        assert line.startswith("live view: http://127.0.0.1:"), line
        url = line.split(": ", 1)[1].strip()
        driver = chromium_driver()
        driver.get(url)
        assert driver.title.startswith("detector:")
        wait_for(lambda: driver.execute_script("return document.getElementById('view').naturalWidth") == 768,
                 60, "the MJPEG stream to show a 768-wide frame")  # fmt: skip
        stats = wait_for(lambda: "fps" in (t := driver.find_element("id", "stats").text) and t, 30, "live stats")
        assert "frame" in stats and "viewer" in stats
        png = tmp_path / "page.png"
        driver.save_screenshot(str(png))
        shot = cv2.imread(str(png))
        assert shot is not None and shot[100:500, 100:700].std() > 10, "the page shows the video, not a blank"
    finally:
        if driver is not None:
            driver.quit()
        # outputs are written under a temporary name until finalised
        partial = lambda: next(tmp_path.glob("live.partial-*.jsonl"), None)  # noqa: E731
        wait_for(lambda: (p := partial()) and len(p.read_text().splitlines()) >= 3, 60, "a few frames written")
        assert not jsonl.exists(), "the JSON Lines file appears under its own name only when complete"
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail("the run did not stop within 30 s of Ctrl-C")
    assert proc.returncode == 130, err
    assert "interrupted by SIGINT" in err and "Traceback" not in err
    assert not list(tmp_path.glob("*partial*")), "no temporary file is left behind"
    lines = [json.loads(x) for x in jsonl.read_text().splitlines()]
    cap = cv2.VideoCapture(str(out))
    try:
        frames = 0
        while cap.read()[0]:
            frames += 1
    finally:
        cap.release()
    assert frames == len(lines) >= 3, "every frame in the video has its JSON line, and the video is playable"
    assert [r["frame"] for r in lines] == list(range(len(lines)))
