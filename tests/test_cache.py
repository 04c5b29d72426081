"""Random weights are the same in every build, and the export cache is bounded, LRU and safe between processes.

Exports are faked (a few bytes instead of a 20 s trace) and engines are stubs, so the cache
logic runs in well under a second per load; only random-init model builds cost time.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import pytest
import torch

from detector import Detector
from detector.cli import main
from detector.engines import cache
from detector.engines.load import cache_key
from detector.errors import ConfigError, EngineError
from detector.models import build_model
from detector.models.registry import MODELS

from .conftest import tiny_config

MODEL = "fasterrcnn_resnet50_fpn"
KB = 1024


@pytest.fixture(autouse=True)
def _isolate_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads or fills the user's export cache."""
    monkeypatch.setenv("DETECTOR_CACHE", str(tmp_path / "detector_cache"))
    monkeypatch.delenv(cache.MAX_MB_ENV, raising=False)


class StubEngine:
    kind = "onnxruntime"
    precision = "fp32"

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        raise AssertionError("not run in these tests")


@pytest.fixture
def exports(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Fake the ONNX trace (300 kB of bytes) and the engine; returns the paths traced to."""
    traced: list[Path] = []

    def fake_trace(model: object, path: Path) -> None:
        traced.append(path)
        path.write_bytes(os.urandom(300 * KB))

    monkeypatch.setattr("detector.engines.export._export_onnx", fake_trace)
    monkeypatch.setattr("detector.engines.load.open_engine", lambda path, engine, precision: StubEngine(path))
    return traced


def onnx_config(**overrides: object):  # noqa: ANN201
    return tiny_config(MODEL, engine="onnxruntime", **overrides)


def fake_entry(name: str, size_kb: int, age_s: float, model: str = MODEL) -> Path:
    """An entry as an export leaves it (sidecar + model file), last used ``age_s`` seconds ago."""
    entry = cache.exports_dir() / name
    entry.mkdir(parents=True)
    (entry / "model.onnx").write_bytes(b"\0" * size_kb * KB)
    (entry / "model.json").write_text(json.dumps({"model": model, "format": "onnx", "precision": "fp32"}))
    old = time.time() - age_s
    os.utime(entry, (old, old))
    return entry


def names() -> set[str]:
    return {p.name for p in cache.exports_dir().iterdir()}


# -- 1. random weights are seeded in the build ------------------------------------------------------------------


def test_random_weights_are_identical_and_leave_the_global_rng_alone() -> None:
    cfg = tiny_config(MODEL)
    before = torch.get_rng_state()
    first, _, _ = build_model(cfg)
    assert torch.equal(torch.get_rng_state(), before), "a build must not move the caller's RNG"
    torch.rand(1000)  # whatever the caller does with the global RNG meanwhile ...
    second, _, _ = build_model(cfg)
    a, b = first.state_dict(), second.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # ... the weights are the same
    torch.manual_seed(0)  # the weights torchrun's processes drew before (they seeded 0 globally)
    reference = MODELS[MODEL].build(cfg, 91).state_dict()
    assert all(torch.equal(a[k], reference[k]) for k in a)


def test_two_loads_with_random_weights_share_one_cache_entry(exports: list[Path]) -> None:
    first = Detector.from_config(onnx_config())
    second = Detector.from_config(onnx_config())
    assert len(exports) == 1, "the second load exported again (new random weights, new key)"
    assert names() == {first.engine.path.parent.name}  # type: ignore[attr-defined]
    assert second.engine.path == first.engine.path  # type: ignore[attr-defined]


# -- 2. bounded, least recently used, safe between processes ----------------------------------------------------


def test_new_entry_evicts_the_least_recently_used_over_the_limit(
    exports: list[Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(cache.MAX_MB_ENV, "1")
    Detector.from_config(onnx_config())  # entry E, 300 kB
    (used,) = names()
    os.utime(cache.exports_dir() / used, (time.time() - 5000,) * 2)  # E: the oldest ...
    fake_entry("old-a", 500, age_s=3000)
    fake_entry("old-b", 500, age_s=2000)
    Detector.from_config(onnx_config())  # ... until used again: a cache hit touches it
    assert len(exports) == 1
    with caplog.at_level(logging.INFO, logger="detector.engines.cache"):
        new = Detector.from_config(onnx_config(score_threshold=0.3))  # a new key: 300 kB more, 1.6 MB in all
    assert len(exports) == 2
    kept = {used, new.engine.path.parent.name}  # type: ignore[attr-defined]
    assert names() == kept, "old-a and old-b (least recently used) go; the used and the new entry stay"
    lines = [r.getMessage() for r in caplog.records if "export cache" in r.getMessage()]
    assert lines == ["export cache: removed 2 entries (1 MB) over the 1 MB limit"]


def test_eviction_keeps_the_new_entry_and_entries_in_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cache.MAX_MB_ENV, "0")
    new = fake_entry("new", 100, age_s=4000)
    fake_entry("loading-elsewhere", 100, age_s=5)  # used seconds ago: maybe being loaded by another process
    stale = fake_entry("stale", 100, age_s=4000)
    size = sum(f.stat().st_size for f in stale.iterdir())
    assert cache.evict(keep=new) == (1, size)
    assert names() == {"new", "loading-elsewhere"}


def test_removal_renames_first_and_leftovers_are_swept(monkeypatch: pytest.MonkeyPatch) -> None:
    entry = fake_entry("e", 10, age_s=0)
    renamed: list[tuple[Path, Path]] = []
    real_rename = Path.rename

    def spy(self: Path, target: Path) -> Path:
        renamed.append((self, Path(target)))
        if self.exists():
            assert (self / "model.json").is_file() and (self / "model.onnx").is_file(), "renamed while whole"
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", spy)
    assert cache.remove_entry(entry) and not entry.exists()
    assert renamed[0][0] == entry and renamed[0][1].name.startswith(cache.TRASH)
    assert not cache.remove_entry(entry), "already gone (another process): no error"
    # what killed processes leave: a trash folder mid-delete, an old staging folder; a fresh staging stays
    for name, age in ((".trash-x-1-2", 0), (".staging-y-old", 2 * cache.STALE_S), (".staging-z-new", 0)):
        (cache.exports_dir() / name).mkdir()
        os.utime(cache.exports_dir() / name, (time.time() - age,) * 2)
    assert cache.entries() == []
    cache.evict()
    assert names() == {".staging-z-new"}


def test_an_entry_evicted_while_loading_is_exported_again(exports: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    Detector.from_config(onnx_config())
    (entry,) = cache.exports_dir().iterdir()
    calls: list[Path] = []

    def evicted_under_us(path: Path, engine: str, precision: str) -> StubEngine:
        calls.append(path)
        if len(calls) == 1:  # another process renames the entry away between our check and our load
            cache.remove_entry(path.parent)
            raise EngineError(f"cannot load ONNX model {path} (file not found); re-export it")
        return StubEngine(path)

    monkeypatch.setattr("detector.engines.load.open_engine", evicted_under_us)
    det = Detector.from_config(onnx_config())
    assert len(exports) == 2 and len(calls) == 2 and det.engine.path.is_file()  # type: ignore[attr-defined]
    assert names() == {entry.name}


def test_a_corrupt_entry_is_replaced_and_a_concurrent_valid_one_kept(
    exports: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    Detector.from_config(onnx_config())
    (entry,) = cache.exports_dir().iterdir()
    (entry / "model.onnx").write_bytes(b"truncated")
    Detector.from_config(onnx_config())
    assert len(exports) == 2 and names() == {entry.name}
    assert cache.publish(cache.exports_dir() / "missing", entry, lambda e: True) is False  # valid: kept
    with pytest.raises(EngineError, match="cannot move the export into the cache"):
        cache.publish(cache.exports_dir() / "missing", cache.exports_dir() / "absent", lambda e: True)


def test_a_bad_limit_is_one_line_before_any_export(exports: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    for bad in ("lots", "-5", "nan"):
        monkeypatch.setenv(cache.MAX_MB_ENV, bad)
        with pytest.raises(ConfigError, match=f"DETECTOR_CACHE_MAX_MB must be a size in MB .*got '{bad}'"):
            Detector.from_config(onnx_config())
    assert exports == []
    monkeypatch.setenv(cache.MAX_MB_ENV, "512.5")
    assert cache.max_mb() == 512.5


# -- 3. detector cache list | clear ------------------------------------------------------------------------------


def test_cache_list_and_clear(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["cache", "list"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"total: 0 entries, 0.0 MB of the 2048 MB limit ($DETECTOR_CACHE_MAX_MB) in {cache.exports_dir()}"
    ]
    key = cache_key(tiny_config(MODEL), "random:x", "onnx")
    fake_entry(f"{MODEL}-{key}", 1536, age_s=7200)
    fake_entry(f"retinanet_resnet50_fpn-{key}", 512, age_s=60, model="retinanet_resnet50_fpn")
    monkeypatch.setenv(cache.MAX_MB_ENV, "4000")
    assert main(["cache", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert lines[0].split()[:6] == [f"{MODEL}-{key}", MODEL, "onnx", "fp32", "1.5", "MB"]  # oldest first
    assert lines[1].split()[:6] == [f"retinanet_resnet50_fpn-{key}", "retinanet_resnet50_fpn", "onnx", "fp32",
                                    "0.5", "MB"]  # fmt: skip
    assert "last used 20" in lines[0]
    assert (
        lines[2] == f"total: 2 entries, 2.0 MB of the 4000 MB limit ($DETECTOR_CACHE_MAX_MB) in {cache.exports_dir()}"
    )
    assert main(["cache", "clear"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"removed 2 entries (2.0 MB) from {cache.exports_dir()}"]
    assert names() == set()
    assert main(["cache", "clear"]) == 0
    assert capsys.readouterr().out.startswith("removed 0 entries (0.0 MB)")


def test_cache_command_errors_are_one_line(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cache.MAX_MB_ENV, "2GB")
    assert main(["cache", "list"]) == 2
    err = capsys.readouterr().err
    assert err == "error: DETECTOR_CACHE_MAX_MB must be a size in MB (0 or more), got '2GB'\n"
    with pytest.raises(SystemExit) as exc:
        main(["cache", "purge"])
    assert exc.value.code == 2


def test_an_unwritable_cache_is_one_line(
    exports: list[Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    monkeypatch.setenv("DETECTOR_CACHE", str(blocker))
    with pytest.raises(EngineError, match="cannot write the export cache .*set DETECTOR_CACHE to a writable folder"):
        Detector.from_config(onnx_config())
    assert main(["cache", "list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot read the export cache") and err.count("\n") == 1
