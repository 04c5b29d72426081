"""Every user mistake we know of, through the CLI's ``main``: exit code 2, one line naming the problem
and the fix, no traceback, inputs unchanged by checksum, earlier outputs intact.

Each case builds its own files in a fresh folder; "earlier outputs" are files already at the
paths the failing command would write, which must survive byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from detector.cli import main

from .conftest import COCO_MINI, DEMO, TORCHSCRIPT, need

EARLIER = b"an earlier run's output"


@dataclass(frozen=True)
class Case:
    args: Callable[[Path], list[str]]
    """The command line, given the case's folder (which holds ``imgs/`` with two images,
    ``img.jpg``, ``gt.json`` and ``clip.mp4``)."""
    message: str
    """A piece of the one error line."""
    earlier: tuple[str, ...] = ()
    """Files (relative to the case folder) that exist before the run and must survive."""


def _results(folder: Path, row: dict[str, object]) -> Path:
    gt = json.loads((folder / "gt.json").read_text())
    base = {"image_id": gt["images"][0]["id"], "category_id": 1, "bbox": [1.0, 2.0, 3.0, 4.0], "score": 0.9}
    path = folder / "res.json"
    path.write_text(json.dumps([{**base, **row}]))  # json writes NaN as NaN, as Python tools do
    return path


def _string_ids(folder: Path) -> Path:
    gt = json.loads((folder / "gt.json").read_text())
    gt["images"][0]["id"] = str(gt["images"][0]["id"])
    path = folder / "bad_gt.json"
    path.write_text(json.dumps(gt))
    return path


def _duplicate_ids(folder: Path) -> Path:
    gt = json.loads((folder / "gt.json").read_text())
    gt["images"].append(dict(gt["images"][0]))
    path = folder / "bad_gt.json"
    path.write_text(json.dumps(gt))
    return path


M = ["--model", str(TORCHSCRIPT)]
CASES: dict[str, Case] = {
    "folder --out is the input folder": Case(lambda d: ["run", str(d / "imgs"), *M, "--out", str(d / "imgs")],
                                             "would overwrite the input"),
    "glob --out is the input folder": Case(lambda d: ["run", str(d / "imgs" / "*.jpg"), *M, "--out", str(d / "imgs")],
                                           "would overwrite the input"),
    "--out is the input image": Case(lambda d: ["run", str(d / "img.jpg"), *M, "--out", str(d / "img.jpg")],
                                     "would overwrite the input"),
    "--json is the input video": Case(lambda d: ["run", str(d / "clip.mp4"), *M, "--json", str(d / "clip.mp4")],
                                      "would overwrite the input"),
    "--json equals --out": Case(lambda d: ["run", str(d / "clip.mp4"), *M, "--out", str(d / "o.mp4"),
                                           "--json", str(d / "o.mp4")], "same file", ("o.mp4",)),
    "image --out x.mp4": Case(lambda d: ["run", str(d / "img.jpg"), *M, "--out", str(d / "x.mp4")],
                              "give --out an image extension"),
    "image --out x.xyz": Case(lambda d: ["run", str(d / "img.jpg"), *M, "--out", str(d / "x.xyz")],
                              "give --out an image extension"),
    "video --out x.xyz": Case(lambda d: ["run", str(d / "clip.mp4"), *M, "--out", str(d / "x.xyz")],
                              "as the extension"),
    "--stats under a file": Case(lambda d: ["run", str(d / "clip.mp4"), *M, "--out", str(d / "o.mp4"),
                                            "--stats", str(d / "img.jpg" / "s.json")],
                                 "cannot create output folder", ("o.mp4", "o.jsonl")),
    "--stats over an earlier video": Case(lambda d: ["run", str(d / "clip.mp4"), *M, "--out", str(d / "o.mp4"),
                                                     "--stats", str(d / "v.mp4")], "is not a .json file", ("v.mp4",)),
    "--json over an earlier video": Case(lambda d: ["run", str(d / "clip.mp4"), *M, "--out", str(d / "o.mp4"),
                                                    "--json", str(d / "v.mp4")], "is not a .jsonl file", ("v.mp4",)),
    "--json over an earlier stats file": Case(lambda d: ["run", str(d / "clip.mp4"), *M, "--json", str(d / "s.json")],
                                              "is not a .jsonl file", ("s.json",)),
    "--stats over an earlier JSONL": Case(lambda d: ["run", str(d / "clip.mp4"), *M, "--out", str(d / "o.mp4"),
                                                     "--stats", str(d / "d.jsonl")], "is not a .json file",
                                          ("d.jsonl", "o.mp4")),
    "video folder --stats over a video": Case(lambda d: ["run", str(_videos(d)), *M, "--stats", str(d / "v.mp4")],
                                              "is not a .json file", ("v.mp4",)),
    "--start past the end": Case(lambda d: ["run", str(d / "clip.mp4"), *M, "--start", "5000"],
                                 "it has 60 frames"),
    "--end before --start": Case(lambda d: ["run", str(d / "clip.mp4"), *M, "--start", "5", "--end", "5"],
                                 "--end (5) must be greater than --start (5)"),
    "--classes unknown id": Case(lambda d: ["run", str(d / "img.jpg"), *M, "--classes", "999",
                                            "--out", str(d / "o.jpg")], "ids run 1..90", ("o.jpg", "o.jsonl")),
    "--classes misspelt": Case(lambda d: ["run", str(d / "img.jpg"), *M, "--classes", "persn"],
                               "did you mean 'person'"),
    "--score out of range": Case(lambda d: ["run", str(d / "img.jpg"), *M, "--score", "2"],
                                 "--score must be a number in [0, 1]"),
    "--min-size above --max-size": Case(lambda d: ["run", str(d / "img.jpg"), "--min-size", "900", "--max-size", "800"],
                                        "--min-size (900) must not exceed max_size"),
    "fake --weights file": Case(lambda d: ["run", str(d / "img.jpg"), "--weights", str(d / "gt.json")],
                                "it is not a PyTorch file"),
    "eval --annotations is a folder": Case(lambda d: ["eval", "--annotations", str(d), "--images", str(d / "imgs")],
                                           "is a folder"),
    "eval string image ids": Case(lambda d: ["eval", "--annotations", str(_string_ids(d)), "--results", "x.json"],
                                  "is not an integer"),
    "eval duplicate image id": Case(lambda d: ["eval", "--annotations", str(_duplicate_ids(d)),
                                               "--images", str(d / "imgs"), *M], "appears twice"),
    "eval results with string bbox": Case(lambda d: ["eval", "--annotations", str(d / "gt.json"), "--results",
                                                     str(_results(d, {"bbox": ["1", 2, 3, 4]}))], "detection 0"),
    "eval results with string score": Case(lambda d: ["eval", "--annotations", str(d / "gt.json"), "--results",
                                                      str(_results(d, {"score": "0.9"}))], "score"),
    "eval results with NaN score": Case(lambda d: ["eval", "--annotations", str(d / "gt.json"), "--results",
                                                   str(_results(d, {"score": float("nan")}))], "not a finite number"),
    "eval results with inf box": Case(lambda d: ["eval", "--annotations", str(d / "gt.json"), "--results",
                                                 str(_results(d, {"bbox": [1, 2, float("inf"), 4]}))],
                                      "not a finite number"),
    "eval results with negative width": Case(lambda d: ["eval", "--annotations", str(d / "gt.json"), "--results",
                                                        str(_results(d, {"bbox": [10, 2, -3, 4]}))], "negative"),
    "eval --images with --results": Case(lambda d: ["eval", "--annotations", str(d / "gt.json"), "--images",
                                                    str(d / "imgs"), "--results", str(_results(d, {})), *M],
                                         "would be ignored"),
    "eval --out is a file": Case(lambda d: ["eval", "--annotations", str(d / "gt.json"), "--images", str(d / "imgs"),
                                            *M, "--out", str(d / "img.jpg")], "is a file"),
    "--weights of another model": Case(lambda d: ["run", str(d / "img.jpg"), "--weights", str(_foreign_weights(d)),
                                                  "--min-size", "128", "--max-size", "160", "--device", "cpu"],
                                       "1 unexpected, 1 of another shape; first missing: "),
    "eval results with NaN score and long numbers": Case(lambda d: ["eval", "--annotations", str(d / "gt.json"),
                                                                    "--results", str(_results(d, _LONG_NAN_ROW))],
                                                         '"score": NaN, ...}; fix the file'),
    "--stats is the input video": Case(lambda d: ["run", str(d / "clip.mp4"), *M, "--out", str(d / "o.mp4"),
                                                  "--stats", str(d / "clip.mp4")], "choose another --stats path",
                                       ("o.mp4",)),
    "empty folder": Case(lambda d: ["run", str(_empty(d)), *M], ", nor videos (it holds no file); give a folder"),
    "glob of videos matching nothing": Case(lambda d: ["run", str(d / "imgs" / "*.mp4"), *M],
                                            str(Path("imgs") / "*.mp4") + " matched no file"),
    "--serve port out of range": Case(lambda d: ["run", str(d / "clip.mp4"), *M, "--serve", "99999"],
                                      "port 99999 is out of range 1-65535"),
    "eval --out over its annotations": Case(lambda d: ["eval", "--annotations", str(_renamed_gt(d)), "--images",
                                                       str(d / "imgs"), *M, "--out", str(d)],
                                            "would overwrite the input"),
}  # fmt: skip


_LONG_NAN_ROW = {"bbox": [0.30000000000000004, 1.2345678901234567, 20.000000000000004, 7.123456789012345],
                 "score": float("nan"), "area": 123.45678901234568, "segmentation": [[1.5] * 40]}  # fmt: skip
"""Longer than the 120 characters errors once cut rows at, mid-number; the NaN comes last."""


def _foreign_weights(folder: Path) -> Path:
    """A small .pth that fits no registry model: one unknown key and one key of the wrong shape."""
    path = folder / "foreign.pth"
    torch.save({"backbone.body.conv1.weight": torch.zeros(8, 3, 3, 3), "head.extra.weight": torch.zeros(2)}, path)
    return path


def _empty(folder: Path) -> Path:
    (folder / "empty").mkdir()
    return folder / "empty"


def _videos(folder: Path) -> Path:
    """A folder holding one video (a folder of videos runs through its own planning code)."""
    (folder / "vids").mkdir()
    shutil.copy(folder / "clip.mp4", folder / "vids" / "clip.mp4")
    return folder / "vids"


def _renamed_gt(folder: Path) -> Path:
    """Ground truth stored as ``metrics.json``: an eval writing to its folder would replace it."""
    path = folder / "metrics.json"
    shutil.copy(folder / "gt.json", path)
    return path


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bad_inputs")
    images = sorted(need(COCO_MINI / "val2017").glob("*.jpg"))[:2]
    (folder / "imgs").mkdir()
    for src in images:
        shutil.copy(src, folder / "imgs" / src.name)
    shutil.copy(images[0], folder / "img.jpg")
    shutil.copy(DEMO, folder / "clip.mp4")
    gt = json.loads((COCO_MINI / "annotations" / "instances_val2017.json").read_text())
    ids = {img["id"] for img in gt["images"] if img["file_name"] in {p.name for p in images}}
    gt["images"] = [img for img in gt["images"] if img["id"] in ids]
    gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] in ids]
    (folder / "gt.json").write_text(json.dumps(gt))
    return folder


def checksums(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_and_loses_nothing(
    name: str, template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    case = CASES[name]
    folder = tmp_path / "case"
    shutil.copytree(template, folder)
    for rel in case.earlier:
        (folder / rel).write_bytes(EARLIER)
    args = case.args(folder)  # may write the case's own bad input files
    before = checksums(folder)
    monkeypatch.chdir(folder)
    code = main(["-q", *args])  # in-process: an uncaught exception (a traceback for a user) fails the test
    err = capsys.readouterr().err.strip()
    assert code == 2, f"exit {code}: {err}"
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert case.message in err, err
    assert checksums(folder) == before, "an input or an earlier output changed, vanished or a file appeared"


def test_quiet_after_the_subcommand_and_version() -> None:
    res = subprocess.run([sys.executable, "-m", "detector", "--version"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.startswith("detector-rt 0."), res.stderr
    res = subprocess.run([sys.executable, "-m", "detector", "weights", "list", "-q"], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr
