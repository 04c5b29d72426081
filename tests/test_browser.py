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


def test_grid_of_four_sources_in_chromium_with_a_stalled_one(tmp_path: Path) -> None:
    """Four live MJPEG cameras on loopback, one model, ``--serve``: the page shows a tile per source, every
    tile shows video, a camera that stalls gets a tile that says so while the others go on, each source has
    its own MJPEG stream and its health in /stats.json, and Ctrl-C leaves every output complete."""
    import urllib.request

    from detector import DEMO_CLIP

    from .stream_server import MjpegServer, jpeg_frames

    frames = jpeg_frames(DEMO_CLIP, n=20)
    out = tmp_path / "out"
    names = ["door", "yard", "hall", "gate"]
    servers = [MjpegServer(frames, fps=8.0) for _ in names]
    proc = subprocess.Popen(
        [sys.executable, "-m", "detector", "-q", "run", *(f"{n}={s.url}" for n, s in zip(names, servers, strict=True)),
         "--model", "d2go", "--serve", "127.0.0.1:0", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    driver = None
    try:
        line = wait_for(lambda: proc.stdout.readline(), 90, "the live view URL")  # type: ignore[union-attr]
        assert line.startswith("live view: http://127.0.0.1:"), line
        url = line.split(": ", 1)[1].strip()

        def stats() -> dict:
            with urllib.request.urlopen(url + "stats.json", timeout=10) as r:
                return json.loads(r.read())

        driver = chromium_driver()
        driver.set_window_size(1400, 1100)
        driver.get(url)
        assert driver.title.startswith("detector:")
        widths = "return [...document.querySelectorAll('.tile img')].map(i => i.naturalWidth)"
        wait_for(lambda: driver.execute_script(widths) == [384] * 4, 90, "all four tiles to show a frame")
        wait_for(lambda: all(s["state"] == "running" for s in stats()["sources"].values()), 30, "four running")
        assert stats()["viewers"] >= 1, "the page's one grid stream counts as a viewer"

        servers[3].stall(60)  # gate: connection open, nothing sent
        tile = "return document.querySelector('.tile[data-source=gate]')"
        wait_for(lambda: "stalled" in driver.execute_script(tile + ".className"), 30, "the stalled tile to say so")
        overlay = driver.execute_script(tile + ".querySelector('.overlay').textContent")
        assert "stalled" in overlay or "reconnecting" in overlay, overlay
        health = stats()["sources"]
        assert health["gate"]["state"] in ("reconnecting", "connecting"), health["gate"]
        before = {n: health[n]["frame"] for n in names[:3]}
        time.sleep(2.0)
        after = stats()["sources"]
        assert all(after[n]["frame"] > before[n] for n in names[:3]), "the other three go on during the stall"
        assert all(after[n]["state"] == "running" for n in names[:3]), after

        png = tmp_path / "grid.png"
        driver.save_screenshot(str(png))
        shot = cv2.imread(str(png))
        rects = driver.execute_script(
            "return [...document.querySelectorAll('.tile img')].map(i => {const r = i.getBoundingClientRect();"
            " return [r.left, r.top, r.width, r.height];})"
        )
        for name, (x, y, w, h) in zip(names, rects, strict=True):
            x0, y0, x1, y1 = int(x) + 4, int(y) + 4, int(x + w) - 4, int(y + h) - 4
            assert y1 <= shot.shape[0] and x1 <= shot.shape[1], f"tile {name} is inside the window"
            assert shot[y0:y1, x0:x1].std() > 10, f"tile {name} shows video, not a blank"

        with urllib.request.urlopen(url + "stream/yard.mjpg", timeout=10) as r:  # a source's own stream
            assert r.headers["Content-Type"].startswith("multipart/x-mixed-replace")
            head = r.read(200)
        assert b"Content-Type: image/jpeg" in head and b"X-Source" not in head
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(url + "stream/nobody.mjpg", timeout=10)
        assert missing.value.code == 404
    finally:
        if driver is not None:
            driver.quit()
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail("the run did not stop within 60 s of Ctrl-C")
        for server in servers:
            server.stop()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.{k}" for n in names for k in ("jsonl", "mp4"))
    for name in names:
        n = len((out / f"{name}.jsonl").read_text().splitlines())
        cap = cv2.VideoCapture(str(out / f"{name}.mp4"))
        try:
            assert cap.isOpened() and cap.read()[0], f"{name}.mp4 is playable"
        finally:
            cap.release()
        assert n >= 1, name
