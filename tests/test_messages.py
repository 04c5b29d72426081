"""Messages that once were cut or wrong (issue 19 item 8): each says the whole thing, and the truth.

The one-line user mistakes among them (exit 2, inputs unchanged) are cases in ``test_bad_inputs.py``;
these are the rest: texts checked directly, parser errors, a stop signal, the start line, a warning.
"""

from __future__ import annotations

import logging
import re
import signal
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from detector import predictor as P
from detector import runner
from detector.cli import main
from detector.engines.export import progress_line
from detector.errors import DetectorError, Interrupted
from detector.eval.scoring import quote_row
from detector.models.build import clip, state_dict_mismatch

from .conftest import DEMO, TORCHSCRIPT, need

NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?|NaN|-?Infinity")


# -- 1. a .pth that does not fit: counts, the first key, the fix; never torch's text cut mid-word ------------


def test_state_dict_mismatch_is_a_short_summary() -> None:
    wanted = {"a.weight": torch.zeros(4, 3), "b.weight": torch.zeros(2), "c.bias": torch.zeros(1)}
    given = {"a.weight": torch.zeros(5, 3), "b.weight": torch.zeros(2), "x.y": torch.zeros(1), "x.z": torch.zeros(1)}
    assert (
        state_dict_mismatch(wanted, given) == "1 missing key, 2 unexpected, 1 of another shape; first missing: c.bias"
    )
    assert state_dict_mismatch(wanted, {**wanted, "a.weight": torch.zeros(5, 3)}) == (
        "1 of another shape; first: a.weight is 5x3 in the file, 4x3 in the model"
    )
    assert state_dict_mismatch(wanted, dict(wanted)) is None


def test_clip_cuts_at_a_word_boundary() -> None:
    text = "copying a param with shape torch.Size([91, 1024]) from checkpoint, the shape in current model is " * 3
    short = clip(text, 100)
    assert len(short) <= 100 and short.endswith("...")
    assert text.startswith(short[:-3]) and text[len(short) - 3] == " ", "cut between words, not inside one"
    assert clip("short", 100) == "short"


# -- 2. eval: a bad results row is quoted whole (abbreviated between items), never cut mid-number ------------


def test_results_row_is_quoted_without_cutting_a_number() -> None:
    bbox = [0.30000000000000004, 1.2345678901234567, 20.000000000000004, float("inf")]
    row = {"image_id": 139, "category_id": 1, "bbox": bbox, "score": float("nan"), "segmentation": [[1.25] * 300],
           "area": 12.345678901234567}  # fmt: skip
    quoted = quote_row(row)
    assert quoted == (
        '{"image_id": 139, "category_id": 1, "bbox": [0.30000000000000004, 1.2345678901234567, '
        '20.000000000000004, Infinity], "score": NaN, ...}'
    )
    long_list = quote_row(list(np.linspace(0, 1, 200).tolist()))
    assert long_list.endswith(", ...]") and len(long_list) <= 110
    for token in NUMBER.findall(long_list):  # every number shown is one of the row's, whole
        assert float(token) in set(np.linspace(0, 1, 200).tolist()), token


# -- 5. an interrupted export says so -------------------------------------------------------------------------


def test_interrupted_export_says_interrupted(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(KeyboardInterrupt), progress_line("exporting m to onnx"):
        raise Interrupted(signal.SIGTERM, "SIGTERM")
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.fullmatch(r"exporting m to onnx \.\.\. interrupted after \d+ s", last), last
    with pytest.raises(ValueError), progress_line("exporting m to onnx"):
        raise ValueError("boom")
    assert "... failed in " in capsys.readouterr().err
    with progress_line("exporting m to onnx"):
        pass
    assert "... done in " in capsys.readouterr().err


# -- 8. argparse's mistakes are one line, as every other error --------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["run", "--codec", "vp9"],
            "error: --codec must be one of auto, h264, mp4v, got 'vp9' (see detector run --help)",
        ),
        (["rn"], "error: unknown command 'rn'; use one of run, eval, export, weights, cache (see detector --help)"),
        (["run", "--max-frames", "ten"], "error: --max-frames must be an integer, got 'ten' (see detector run --help)"),
    ],
)
def test_parser_errors_are_one_line(argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert captured.err == expected + "\n" and captured.out == ""


def test_help_is_still_the_full_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["run", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: detector run") and "--codec {auto,h264,mp4v}" in out


# -- 4. a stop signal before the first frame says truthfully that nothing is in the outputs ----------------


def _interrupt(*_args: object, **_kwargs: object) -> None:
    raise Interrupted(signal.SIGHUP, "SIGHUP")


@pytest.mark.parametrize("where", ["open_sinks", "run_pipeline"])
def test_stop_before_the_first_frame_does_not_claim_frames(
    where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``open_sinks``: the signal lands before any output is opened, so the earlier files stay; ``run_pipeline``:
    after they are opened, before any frame was detected."""
    out, jsonl = tmp_path / "x.mp4", tmp_path / "x.jsonl"
    out.write_bytes(b"an earlier video")
    jsonl.write_bytes(b"an earlier line\n")
    monkeypatch.setattr(runner, where, _interrupt)
    code = main(["-q", "run", str(DEMO), "--model", str(need(TORCHSCRIPT)), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 129 and len(err.splitlines()) == 1, err
    assert "processed so far are in" not in err, err
    if out.read_bytes() == b"an earlier video" and jsonl.read_bytes() == b"an earlier line\n":
        assert err == f"interrupted by SIGHUP; nothing was written, {out} and {jsonl} kept as they were"
    else:  # the sinks finalised empty files over the earlier ones: say that no frame is in them
        assert err == f"interrupted by SIGHUP; no frame was processed ({out} and {jsonl} hold no frames)"


# -- 9. the start line names the engine -------------------------------------------------------------------------


def test_start_line_names_the_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fake = types.SimpleNamespace(name="fasterrcnn_resnet50_fpn", device=torch.device("cpu"), precision="int8",
                                 engine=types.SimpleNamespace(kind="openvino"))  # fmt: skip
    monkeypatch.setattr(P.Detector, "from_config", classmethod(lambda cls, cfg, progress=True: fake))

    def stop(*_args: object, **_kwargs: object) -> None:
        raise DetectorError("stopped after the start line")

    monkeypatch.setattr(runner, "run", stop)
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO, logger="detector")
    assert main(["run", str(DEMO), "--out", str(tmp_path / "o.mp4")]) == 2
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("model ")]
    assert lines == [f"model fasterrcnn_resnet50_fpn on cpu, openvino int8; input {DEMO}"], lines


# -- 10. a very large image is warned about once ---------------------------------------------------------------


class _NoBoxes(nn.Module):
    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
        return [dict(empty) for _ in images]


def test_a_huge_image_is_warned_about_once(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(P, "LARGE_IMAGE_PIXELS", 100_000)  # a 400x300 frame stands in for a 12000x9000 JPEG
    detector = P.Detector(_NoBoxes(), device="cpu")
    frame = np.zeros((300, 400, 3), np.uint8)
    with caplog.at_level(logging.WARNING, logger="detector"):
        detector(frame)
        detector([frame, frame])
        detector(np.zeros((30, 40, 3), np.uint8))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("a 400x300 image (0 megapixels) is resized to the model's input")
    assert "takes about 0.0 GB of memory" in warnings[0] and "\n" not in warnings[0]
    caplog.clear()
    quiet = P.Detector(_NoBoxes(), device="cpu")
    with caplog.at_level(logging.WARNING, logger="detector"):
        quiet(np.zeros((30, 40, 3), np.uint8))
    assert not caplog.records


def test_the_warning_gives_the_memory_of_a_12000x9000_image(caplog: pytest.LogCaptureFixture) -> None:
    detector = P.Detector(_NoBoxes(), device="cpu")
    with caplog.at_level(logging.WARNING, logger="detector"):
        detector._warn_if_large(9000, 12000)  # the check alone: no 324 MB frame is decoded here
    (message,) = [r.getMessage() for r in caplog.records]
    assert message.startswith("a 12000x9000 image (108 megapixels) is resized to the model's input")
    assert "about 4.3 GB of memory" in message
