"""The public API as an embedding app uses it: one-step load, stream() as a context manager,
sinks of one shape and Detections interop (the layers are in test_layers.py)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import detector
from detector import Detections, Detector
from detector.io.types import Frame

from .conftest import COCO_MINI, DEMO, need
from .test_live import Publisher
from .test_pipeline import Tiny


def reader_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("detector-")]


def test_load_takes_names_presets_yaml_and_files(tmp_path: Path) -> None:
    d2go = detector.load("d2go", classes="person")
    assert d2go.name == "d2go" and d2go.score_threshold == 0.5 and d2go.keep_labels.tolist() == [1]
    small = {"weights": "random", "min_size": 96, "max_size": 128, "device": "cpu"}
    by_name = detector.load("retinanet_resnet50_fpn", **small)
    by_preset = detector.load("retinanet_r50_fpn_v2", **small)
    yaml = tmp_path / "mine.yaml"
    yaml.write_text("model: fasterrcnn_resnet50_fpn\nscore_threshold: 0.3\n")
    by_yaml = detector.load(yaml, **small)
    assert (by_name.name, by_preset.name, by_yaml.name) == (
        "retinanet_resnet50_fpn",
        "retinanet_resnet50_fpn_v2",
        "fasterrcnn_resnet50_fpn",
    )
    assert by_yaml.score_threshold == 0.3
    frame = np.zeros((64, 80, 3), np.uint8)
    assert isinstance(by_preset(frame), Detections)
    with pytest.raises(detector.ConfigError, match="did you mean 'min_size'"):
        detector.load("d2go", min_sise=3)


def test_frames_as_pil_images_and_paths(torchscript_detector: Detector) -> None:
    from PIL import Image

    path = sorted(need(COCO_MINI / "val2017").glob("*.jpg"))[0]
    from_path = torchscript_detector(path)
    from_pil = torchscript_detector(Image.open(path))
    from_str = torchscript_detector([str(path)])[0]
    assert len(from_path) > 0
    np.testing.assert_allclose(from_pil.boxes, from_path.boxes, atol=1e-3)
    np.testing.assert_array_equal(from_str.labels, from_path.labels)


def test_encoded_bytes_decode_and_a_float_frame_out_of_range_is_refused(torchscript_detector: Detector) -> None:
    """JPEG bytes were iterated as ints ("got int"); a float tensor in 0..255 was read as 0..1
    (25 nonsense detections against 6): refused, never guessed."""
    import cv2

    path = sorted(need(COCO_MINI / "val2017").glob("*.jpg"))[0]
    from_bytes = torchscript_detector(path.read_bytes())
    np.testing.assert_allclose(from_bytes.boxes, torchscript_detector(path).boxes, atol=1e-3)
    with pytest.raises(ValueError, match="not an encoded image"):
        torchscript_detector(b"not an image")
    rgb = torch.from_numpy(cv2.imread(str(path))[:, :, ::-1].copy()).permute(2, 0, 1)
    with pytest.raises(ValueError, match="RGB in 0..1, got values up to 2"):
        torchscript_detector(rgb.float())
    np.testing.assert_array_equal(torchscript_detector(rgb.float() / 255).labels, torchscript_detector(rgb).labels)


def test_stream_is_a_context_manager_with_max_frames() -> None:
    tiny = Detector(Tiny(), device="cpu")
    with detector.open_source(DEMO) as source, detector.stream(tiny, source, max_frames=7) as results:
        indices = [frame.index for frame, _ in results]
    assert indices == list(range(7))
    assert reader_threads() == []
    with detector.open_source(DEMO) as source:
        results = detector.stream(tiny, source)
        next(results)
        assert reader_threads() == ["detector-read"]
        del results  # dropping the stream stops and joins its reader
        assert reader_threads() == []


def test_stream_and_run_take_a_path_in_one_order_and_say_so_when_swapped(tmp_path: Path) -> None:
    """``stream(detector, "clip.mp4")`` opens and closes the source itself; ``run`` and ``stream`` take
    (detector, source) and a swapped pair or a bare callable is a TypeError that says what to pass."""
    tiny = Detector(Tiny(), device="cpu")
    with detector.stream(tiny, str(DEMO), max_frames=3) as results:
        assert [frame.index for frame, _ in results] == [0, 1, 2]
        owned = results._owned
    assert owned is not None and owned._closed and reader_threads() == []
    with detector.open_source(DEMO) as source:
        for call in (lambda: detector.stream(source, tiny), lambda: detector.run(source, tiny)):
            with pytest.raises(TypeError, match=r"takes \(detector, source\), in that order; swap"):
                call()
        with pytest.raises(TypeError, match="takes a detector.Detector first"):
            detector.stream(lambda images: [], source)  # type: ignore[arg-type]


def test_run_with_no_sinks_writes_nothing_and_closes_user_sinks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tqdm import tqdm

    monkeypatch.chdir(tmp_path)
    if tqdm.monitor is not None:  # an earlier bar in this process left tqdm's process-wide monitor running
        tqdm.monitor.exit()
        tqdm.monitor = None
    tiny = Detector(Tiny(), device="cpu")
    result = detector.run(tiny, DEMO, sinks=[], max_frames=3, progress=False)
    assert result.frames == 3 and list(tmp_path.iterdir()) == []  # an explicit [] is no sinks, not ./runs/
    assert "tqdm_monitor" not in [t.name for t in threading.enumerate()]  # progress=False starts no thread

    class Closing:
        def __init__(self, fail_at: int | None = None) -> None:
            self.closed = 0
            self.fail_at = fail_at

        def write(self, frame: Frame, dets: Detections) -> None:
            if frame.index == self.fail_at:
                raise RuntimeError("sink failed")

        def close(self) -> None:
            self.closed += 1

    ok, failing = Closing(), Closing(fail_at=1)
    detector.run(tiny, DEMO, sinks=[ok], max_frames=3, progress=False)
    with pytest.raises(RuntimeError, match="sink failed"):
        detector.run(tiny, DEMO, sinks=[failing], max_frames=3, progress=False)
    assert (ok.closed, failing.closed) == (1, 1)
    with detector.JsonlSink(str(tmp_path / "d.jsonl")) as sink:  # every path argument takes a str too
        sink.write(Frame(0, 0.0, np.zeros((8, 8, 3), np.uint8), "x"), Detections.empty())
    assert (tmp_path / "d.jsonl").read_text().count("\n") == 1
    assert issubclass(detector.ConfigError, ValueError)


def test_stream_on_a_live_source_serves_the_newest_frame() -> None:
    """A model slower than the camera: every result is for a frame at most about one model
    call old, never a backlog (a FIFO of 4 frames would be ~4 calls old)."""
    from detector.io.browser import BrowserSink

    class Slow(Tiny):
        def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
            time.sleep(0.1)
            return super().forward(images)

    with BrowserSink("127.0.0.1", 0) as server:
        publisher = Publisher(server, fps=50)
        try:
            with detector.open_source(server.url + "stream.mjpg") as source:
                ages = []
                with detector.stream(Detector(Slow(), device="cpu"), source, max_frames=12) as results:
                    for frame, _ in results:
                        ages.append(time.perf_counter() - frame.captured_at)
        finally:
            publisher.close()
    assert len(ages) == 12
    assert np.median(ages[2:]) < 0.3, f"results are for stale frames: ages {np.round(ages, 3)}"


def test_user_sinks_get_every_frame_with_its_detections(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []

    class Counter:
        def write(self, frame: Frame, dets: Detections) -> None:
            seen.append((frame.index, len(dets)))

    import detector.runner  # importing the module must not shadow the run() function

    assert detector.run is detector.runner.run
    result = detector.run(Detector(Tiny(), device="cpu"), DEMO, sinks=[Counter()], max_frames=5, progress=False)
    assert seen == [(i, 1) for i in range(5)] and result.frames == 5
    assert result.out is None and result.json is None, "with only user sinks nothing is written to ./runs"


def test_detections_rows_arrays_and_bridges() -> None:
    dets = Detections(np.array([[1, 2, 3, 4], [5, 6, 7, 8]], np.float32), np.array([0.9, 0.4], np.float32),
                      np.array([1, 3]))  # fmt: skip
    rows = list(dets)
    assert [(r[1], r[2], r[3]) for r in rows] == [(pytest.approx(0.9), 1, "person"), (pytest.approx(0.4), 3, "car")]
    np.testing.assert_array_equal(rows[0][0], [1, 2, 3, 4])
    with pytest.raises(TypeError, match="dets.boxes"):
        np.asarray(dets)
    tv = Detections.from_torchvision({"boxes": torch.tensor([[1.0, 2, 3, 4]]), "scores": torch.tensor([0.5]),
                                      "labels": torch.tensor([18])})  # fmt: skip
    assert tv.names == ["dog"]
    import supervision as sv

    svd = dets.to_supervision()
    assert isinstance(svd, sv.Detections)
    np.testing.assert_array_equal(svd.class_id, [1, 3])  # torchvision's COCO ids: person is 1
    assert list(svd.data["class_name"]) == ["person", "car"]
    back = Detections.from_supervision(svd)
    np.testing.assert_array_equal(back.boxes, dets.boxes)
    np.testing.assert_array_equal(back.labels, dets.labels)
    annotated = sv.BoxAnnotator().annotate(np.zeros((20, 20, 3), np.uint8), svd)  # supervision's own annotators
    assert annotated.any()


def test_loading_models_changes_no_global_torch_state() -> None:
    before = torch.backends.quantized.engine
    detector.load("retinanet_resnet50_fpn", weights="random", min_size=96, max_size=128, device="cpu")
    assert torch.backends.quantized.engine == before, "a float model must not switch the quantized engine"


def test_window_like_sinks_are_pumped_on_the_main_thread() -> None:
    """GUI calls (a window's imshow/waitKey) run on the calling thread, not the writer thread;
    the q key (StopPipeline from the pump) ends the run quietly."""
    calls: list[str] = []

    class FakeWindow:
        main_thread_pump = True

        def write(self, frame: Frame, dets: Detections) -> None:
            calls.append(f"write:{threading.current_thread().name}")

        def pump(self) -> None:
            calls.append(f"pump:{threading.current_thread().name}")
            if sum(c.startswith("pump") for c in calls) == 6:
                raise detector.StopPipeline("q pressed")

    result = detector.run(Detector(Tiny(), device="cpu"), DEMO, sinks=[FakeWindow()], progress=False)
    pumps = [c for c in calls if c.startswith("pump")]
    assert pumps == ["pump:MainThread"] * 6
    assert all(c == "write:detector-write" for c in calls if c.startswith("write"))
    assert result.frames <= 5, "the run stopped at the sixth pump"


def test_stream_is_the_function_whatever_was_imported_first() -> None:
    """``detector.pipeline.stream`` names a submodule and the public function: the function wins
    (importing the runner, which imports from the submodule, must not leave the module there)."""
    import detector
    import detector.runner  # noqa: F401
    from detector.pipeline import stream

    assert callable(stream) and callable(detector.stream) and detector.stream is stream
