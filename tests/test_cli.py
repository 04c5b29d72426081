"""``detector run`` end to end on the real video and images, and its errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from detector.cli import main

from .conftest import COCO_MINI, TORCHSCRIPT, VIDEO, need


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "detector", "-q", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_video_end_to_end(tmp_path: Path) -> None:
    out, jsonl = tmp_path / "out" / "annotated.mp4", tmp_path / "dets.jsonl"
    res = run_cli("run", str(need(VIDEO)), "--model", str(need(TORCHSCRIPT)), "--max-frames", "6",
                  "--out", str(out), "--json", str(jsonl), "--classes", "person",
                  "--stats", str(tmp_path / "stats.json"))  # fmt: skip
    assert res.returncode == 0, res.stderr
    cap = cv2.VideoCapture(str(out))
    try:
        assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
        assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (768, 576)
        assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(10.0)
        decoded = 0
        while cap.read()[0]:
            decoded += 1
        assert decoded == 6
    finally:
        cap.release()
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["frame"] for r in lines] == list(range(6))
    assert lines[3]["time"] == pytest.approx(0.3)
    assert all(d["name"] == "person" for r in lines for d in r["detections"])
    assert sum(len(r["detections"]) for r in lines) >= 12
    assert "6 frames" in res.stdout
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["frames"] == 6 and stats["stages"]["inference"]["p50_ms"] > 0
    assert set(stats["stages"]) == {"decode", "preprocess", "inference", "postprocess", "render", "write"}
    assert "inference" in res.stdout and "latency" in res.stdout


def test_truncated_video_keeps_frames_before_the_damage(tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.avi"
    damaged.write_bytes(need(VIDEO).read_bytes()[:400_000])  # about the first 40 frames of 795
    out = tmp_path / "out.mp4"
    res = run_cli("run", str(damaged), "--model", str(TORCHSCRIPT), "--out", str(out))
    assert res.returncode == 0, res.stderr
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert 10 <= len(lines) < 795
    cap = cv2.VideoCapture(str(out))
    try:
        assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == len(lines)
    finally:
        cap.release()
    assert "ended after" in res.stderr  # the user is told the file is shorter than announced


def test_default_source_and_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no SOURCE the embedded demo clip runs; outputs go to ./runs/, numbered on a second run."""
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        assert main(["-q", "run", "--model", "d2go", "--max-frames", "2"]) == 0
    runs = tmp_path / "runs"
    assert sorted(p.name for p in runs.iterdir()) == [
        "vtest_excerpt-2.jsonl", "vtest_excerpt-2.mp4", "vtest_excerpt.jsonl", "vtest_excerpt.mp4"
    ]  # fmt: skip
    assert len((runs / "vtest_excerpt.jsonl").read_text().splitlines()) == 2
    cap = cv2.VideoCapture(str(runs / "vtest_excerpt-2.mp4"))
    try:
        assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_COUNT)) == (768, 2)
    finally:
        cap.release()


def test_image_and_folder(tmp_path: Path) -> None:
    images = sorted(need(COCO_MINI / "val2017").glob("*.jpg"))[:2]
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in images:
        shutil.copy(p, folder / p.name)
    assert main(["-q", "run", str(images[0]), "--model", str(TORCHSCRIPT), "--out", str(tmp_path / "one.png")]) == 0
    one = cv2.imread(str(tmp_path / "one.png"))
    assert one is not None and one.shape == cv2.imread(str(images[0])).shape
    assert main(["-q", "run", str(folder), "--model", str(TORCHSCRIPT), "--out", str(tmp_path / "annotated")]) == 0
    assert sorted(p.name for p in (tmp_path / "annotated").iterdir()) == [p.name for p in images]
    rows = [json.loads(line) for line in (tmp_path / "annotated.jsonl").read_text().splitlines()]
    assert [r["image"] for r in rows] == [p.name for p in images]


def one_line_error(res: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert res.returncode == 2, (res.returncode, res.stderr)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_errors_are_one_line(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("modle: fasterrcnn_resnet50_fpn\n")
    fake_model = tmp_path / "fake.pt"
    fake_model.write_text("not a model")
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    video = str(need(VIDEO))
    cases = [
        (("run", str(tmp_path / "missing.mp4")), ("missing.mp4", "not found")),
        (("run", str(text)), ("cannot decode",)),
        (("run", video, "--config", str(cfg)), ("unknown config key 'modle'", "did you mean 'model'")),
        (("run", video, "--model", "yolo"), ("unknown model 'yolo'",)),
        (("run", video, "--score", "2"), ("--score", "[0, 1]")),
        (("run", video, "--offline"), ("fasterrcnn_resnet50_fpn_coco-258fb6c6.pth", "--weights random")),
        (("run", video, "--model", str(TORCHSCRIPT), "--out", str(blocker / "x.mp4")), ("cannot create output",)),
        (("run", video, "--model", str(TORCHSCRIPT), "--out", str(tmp_path / "x.gif")), ("extension",)),
        (("run", video, "--model", str(tmp_path / "model.pt")), ("model file", "not found")),
        (("run", video, "--model", str(fake_model)), ("not a TorchScript file",)),
        (("run", video, "--max-frames", "0"), ("--max-frames",)),
        (("run", "7"), ("camera 7 cannot be opened",)),
        (("run", "rtsp://127.0.0.1:9/cam"), ("stream rtsp://127.0.0.1:9/cam cannot be opened",)),
        (("run", video, "--show"), ("no GUI", "--serve 8080")),
        (("run", video, "--serve", "localhost:http"), ("PORT or HOST:PORT",)),
    ]
    for args, fragments in cases:
        one_line_error(run_cli(*args, cwd=tmp_path), *fragments)


def test_input_is_never_overwritten(tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    shutil.copy(Path(__file__).resolve().parents[1] / "detector" / "data" / "vtest_excerpt.mp4", clip)
    before = clip.read_bytes()
    res = run_cli("run", str(clip), "--model", str(TORCHSCRIPT), "--out", str(clip))
    one_line_error(res, "would overwrite the input")
    assert clip.read_bytes() == before


def test_weights_list_and_verify(tmp_path: Path) -> None:
    res = run_cli("weights", "list", cwd=tmp_path)
    assert res.returncode == 0 and res.stdout.count("missing") == 4
    res = run_cli("weights", "verify", "retinanet_resnet50_fpn", cwd=tmp_path)
    assert res.returncode == 1 and "retinanet_resnet50_fpn_coco-eeacb38b.pth" in res.stdout
    one_line_error(run_cli("weights", "verify", "nope", cwd=tmp_path), "unknown model 'nope'")
