"""Weights resolution, verification, download and loading, with files the tests create."""

from __future__ import annotations

import dataclasses
import functools
import http.server
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from detector import Detector, WeightsError
from detector.models import MODELS
from detector.models import weights as W
from detector.models.registry import HASH_RE

from .conftest import ROOT, tiny_config

NAME = "fasterrcnn_resnet50_fpn"
STEM = "fasterrcnn_resnet50_fpn_coco"


@dataclasses.dataclass
class Saved:
    path: Path
    state_dict: dict[str, torch.Tensor]
    reference: object  # Detections of the original model on the test frame


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory, small_frame: np.ndarray) -> Saved:
    """A random-init model saved as torchvision names files: ``<stem>-<sha256[:8]>.pth``."""
    torch.manual_seed(123)
    original = Detector(MODELS[NAME].build(tiny_config(NAME, score_threshold=0.0), 91))
    sd = original.model.state_dict()
    path = W.save_with_hash(sd, tmp_path_factory.mktemp("published"), STEM)
    return Saved(path, sd, original(small_frame))


@pytest.fixture
def published(saved: Saved, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the registry entry's URL at the saved file's name, as if torchvision had published it."""
    spec = dataclasses.replace(MODELS[NAME], url=f"https://example.invalid/models/{saved.path.name}")
    monkeypatch.setitem(MODELS, NAME, spec)
    return saved.path


def assert_identical(a: object, b: object) -> None:
    np.testing.assert_array_equal(a.boxes, b.boxes)  # type: ignore[attr-defined]
    np.testing.assert_array_equal(a.scores, b.scores)  # type: ignore[attr-defined]
    np.testing.assert_array_equal(a.labels, b.labels)  # type: ignore[attr-defined]


def config(**overrides: object):  # noqa: ANN201
    return tiny_config(NAME, weights=None, score_threshold=0.0).replace(**overrides)


def test_manifest_matches_torchvision() -> None:
    manifest = json.loads((ROOT / "detector" / "data" / "weights_manifest.json").read_text())
    assert set(manifest) == set(MODELS)
    for name, spec in MODELS.items():
        assert manifest[name] == {
            "file": spec.file_name,
            "url": spec.url,
            "sha256_prefix": spec.sha256_prefix,
            "coco_box_map": spec.box_map,
        }


def test_saved_name_carries_its_sha256_prefix(saved: Saved) -> None:
    prefix = HASH_RE.search(saved.path.name).group(1)  # type: ignore[union-attr]
    assert W.sha256_of(saved.path).startswith(prefix) and len(prefix) == 8
    assert W.verify(saved.path) == prefix


def test_found_in_weights_dir_and_loads_identical(
    published: Path, saved: Saved, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_frame: np.ndarray
) -> None:
    folder = tmp_path / "my_weights"
    folder.mkdir()
    shutil.copy(published, folder / published.name)
    monkeypatch.setenv("DETECTOR_WEIGHTS_DIR", str(folder))
    assert W.resolve(MODELS[NAME]) == folder / published.name
    det = Detector.from_config(config())
    assert_identical(det(small_frame), saved.reference)


def test_found_in_torch_home(published: Path, saved: Saved, tmp_path: Path, small_frame: np.ndarray) -> None:
    hub = W.hub_checkpoints_dir()
    assert str(hub).startswith(str(tmp_path / "torch_home"))  # TORCH_HOME is honoured
    hub.mkdir(parents=True)
    shutil.copy(published, hub / published.name)
    det = Detector.from_config(config())
    assert_identical(det(small_frame), saved.reference)


def test_explicit_path_wins(saved: Saved, small_frame: np.ndarray) -> None:
    det = Detector.from_config(config(weights=str(saved.path)))
    assert_identical(det(small_frame), saved.reference)


@pytest.fixture
def http_mirror(published: Path) -> Iterator[str]:
    """A real HTTP server on loopback serving the published file's folder."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(published.parent))
    handler.log_message = lambda *a, **k: None  # type: ignore[assignment]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_download_from_mirror_into_hub_cache(
    http_mirror: str, published: Path, saved: Saved, monkeypatch: pytest.MonkeyPatch, small_frame: np.ndarray
) -> None:
    monkeypatch.setenv("DETECTOR_WEIGHTS_MIRROR", http_mirror)
    monkeypatch.setenv("DETECTOR_OFFLINE", "0")
    det = Detector.from_config(config(), progress=False)
    cached = W.hub_checkpoints_dir() / published.name
    assert cached.is_file() and W.sha256_of(cached) == W.sha256_of(published)
    assert_identical(det(small_frame), saved.reference)


def test_download_failure_is_one_clear_line(published: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DETECTOR_WEIGHTS_MIRROR", "http://127.0.0.1:9")  # discard port: refused
    monkeypatch.setenv("DETECTOR_OFFLINE", "0")
    with pytest.raises(WeightsError, match=f"cannot download {NAME} weights") as info:
        W.resolve(MODELS[NAME], progress=False)
    assert published.name in str(info.value) and "\n" not in str(info.value)


def test_missing_offline_names_file_place_and_source() -> None:
    spec = MODELS[NAME]
    with pytest.raises(WeightsError) as info:
        Detector.from_config(config())
    msg = str(info.value)
    assert spec.file_name in msg and spec.url in msg and "--weights random" in msg and "\n" not in msg


def test_corrupted_file_fails_checksum(published: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "w"
    folder.mkdir()
    bad = folder / published.name
    data = bytearray(published.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    monkeypatch.setenv("DETECTOR_WEIGHTS_DIR", str(folder))
    with pytest.raises(WeightsError, match="checksum mismatch.*corrupt or truncated"):
        Detector.from_config(config())


def test_truncated_file_fails_checksum_and_load(published: Path, tmp_path: Path) -> None:
    hashed = tmp_path / published.name
    hashed.write_bytes(published.read_bytes()[:100_000])
    with pytest.raises(WeightsError, match="checksum mismatch"):
        W.load_state_dict(hashed)
    plain = tmp_path / "my_model.pth"  # no hash in the name: the loader itself must notice
    plain.write_bytes(published.read_bytes()[:100_000])
    with pytest.raises(WeightsError, match="cannot load weights file.*corrupt") as info:
        Detector.from_config(config(weights=str(plain)))
    assert "\n" not in str(info.value)


def test_missing_explicit_path(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="not found"):
        Detector.from_config(config(weights=str(tmp_path / "nope.pth")))


def test_weights_of_another_model_do_not_fit(saved: Saved) -> None:
    with pytest.raises(WeightsError, match="does not fit retinanet_resnet50_fpn"):
        Detector.from_config(tiny_config("retinanet_resnet50_fpn", weights=str(saved.path)))


def test_custom_classes_from_state_dict(tmp_path: Path, small_frame: np.ndarray) -> None:
    torch.manual_seed(5)
    model = MODELS[NAME].build(tiny_config(NAME, score_threshold=0.0), num_classes=3)
    path = tmp_path / "pets.pth"
    torch.save({"model": model.state_dict(), "epoch": 3}, path)  # a training checkpoint
    names = ["__background__", "cat", "dog"]
    det = Detector.from_config(config(weights=str(path), class_names=names))
    assert det.class_names == tuple(names)
    dets = det(small_frame)
    assert len(dets) > 0 and set(dets.names) <= {"cat", "dog"}
    inferred = Detector.from_config(config(weights=str(path)))  # num_classes read from the file
    assert inferred.class_names == ("class_0", "class_1", "class_2")
    with pytest.raises(WeightsError, match="has 3 classes but the config asks for 4"):
        Detector.from_config(config(weights=str(path), class_names=[*names, "bird"]))


def test_random_weights_custom_classes_and_retinanet_inference(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = MODELS["retinanet_resnet50_fpn"].build(tiny_config("retinanet_resnet50_fpn"), num_classes=5)
    assert MODELS["retinanet_resnet50_fpn"].num_classes_in(model.state_dict()) == 5
    det = Detector.from_config(tiny_config("retinanet_resnet50_fpn", class_names=["bg", "a", "b", "c", "d"],
                                           score_threshold=0.0))  # fmt: skip
    assert det.model.head.classification_head.num_classes == 5
    dets = det(np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8))  # real inference
    assert len(dets) > 0 and set(dets.labels.tolist()) <= {0, 1, 2, 3, 4}
    assert set(dets.names) <= {"bg", "a", "b", "c", "d"}, "names come from the custom class_names"
