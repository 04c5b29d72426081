"""The built wheel works outside the checkout: presets by name, the demo clip, the shipped model.

The presets live in the checkout's top-level ``configs/`` and ship as ``detector/configs/`` in the
wheel (pyproject.toml's package-dir mapping); the distribution is ``detector-rt``, the import name
``detector``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from .conftest import ROOT

CHECKOUT_PRESETS = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
DIST = "detector-rt"


def test_every_subpackage_is_listed_in_pyproject() -> None:
    """pyproject.toml lists the packages by hand (the presets' package-dir mapping rules out find):
    a new folder of modules under detector/ must be listed, or the wheel would lack it."""
    tomllib = pytest.importorskip("tomllib")
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    on_disk = {"detector"} | {
        "detector." + ".".join(d.relative_to(ROOT / "detector").parts)
        for d in (ROOT / "detector").rglob("*")
        if d.is_dir() and d.name != "__pycache__" and (any(d.glob("*.py")) or d.name == "data")
    }
    assert set(setuptools["packages"]) == on_disk | {"detector.configs"}
    assert setuptools["package-dir"] == {"detector.configs": "configs"}
    assert CHECKOUT_PRESETS and not (ROOT / "detector" / "configs").exists()


def test_checkout_finds_the_top_level_presets() -> None:
    from detector.resources import PRESETS_DIR, preset_names, preset_path

    assert PRESETS_DIR == ROOT / "configs"
    assert preset_names() == [name.removesuffix(".yaml") for name in CHECKOUT_PRESETS]
    assert preset_path("fast_cpu.yaml") == ROOT / "configs" / "fast_cpu.yaml"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package built as a wheel and installed (without dependencies) into a folder of its own."""
    dist, target = tmp_path_factory.mktemp("dist"), tmp_path_factory.mktemp("site")
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)]
    res = subprocess.run([*build, "--no-build-isolation"], capture_output=True, text=True, timeout=300)
    if res.returncode != 0:  # no setuptools in this environment: let pip fetch it
        res = subprocess.run(build, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    (wheel,) = dist.glob("detector_rt-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(n.removeprefix("detector/configs/") for n in names if n.startswith("detector/configs/"))
    assert shipped == CHECKOUT_PRESETS, f"the wheel's presets differ from configs/: {shipped}"
    assert all(n.startswith(("detector/", "detector_rt-")) for n in names), [n for n in names if "/" not in n]
    res = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                          str(wheel)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    return target


def run_installed(site: Path, cwd: Path, code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(site), "DETECTOR_OFFLINE": "1", "TORCH_HOME": str(cwd / "torch_home"),
           "DETECTOR_WEIGHTS_DIR": str(cwd / "no_weights"), "DETECTOR_CACHE": str(cwd / "cache")}  # fmt: skip
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=600)  # fmt: skip


def test_installed_wheel_runs_from_any_folder(installed: Path, tmp_path: Path) -> None:
    res = run_installed(
        installed,
        tmp_path,
        f"""
        import contextlib, io, sys
        import detector
        from detector.cli import main
        from detector.resources import preset_names
        assert detector.__file__.startswith({str(installed)!r}), detector.__file__  # not the checkout

        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(["-q", "run"])  # the default model's COCO weights are not here (offline)
        print("default:", code, err.getvalue().strip())
        print("presets:", len(preset_names()))
        for preset in preset_names():
            code = main(["-q", "run", "--config", preset, "--weights", "random", "--min-size", "96",
                         "--max-size", "128", "--max-frames", "1", "--device", "cpu"])
            print("preset", preset, code)
        print("d2go:", main(["-q", "run", "--model", "d2go", "--max-frames", "2"]))
        cfg = detector.load_config("retinanet_r50_fpn_v2")
        print("load_config:", cfg.model)
        from importlib import metadata
        from detector.resources import PRESETS_DIR
        assert str(PRESETS_DIR).startswith({str(installed)!r}), PRESETS_DIR
        for preset in preset_names():
            print("loaded", preset + ".yaml", detector.load_config(preset).model)
        print("version:", metadata.version({DIST!r}), detector.__version__)
    """,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    default = next(line for line in out.splitlines() if line.startswith("default:"))
    assert default.startswith("default: 2 error: ") and "weights" in default and "vtest_excerpt" not in default
    presets = int(next(line for line in out.splitlines() if line.startswith("presets:")).split()[1])
    assert presets >= 6, out  # the four models, speed_cpu_bf16 and fast_cpu (OpenVINO: exported on first use)
    assert len([line for line in out.splitlines() if line.startswith("preset ") and line.endswith(" 0")]) == presets, (
        out
    )
    assert "d2go: 0" in out and "load_config: retinanet_resnet50_fpn_v2" in out
    loaded = sorted(line.split()[1] for line in out.splitlines() if line.startswith("loaded "))
    assert loaded == CHECKOUT_PRESETS, out  # every preset of configs/ loads by name from the wheel
    version = next(line for line in out.splitlines() if line.startswith("version:")).split()[1:]
    assert version[0] == version[1], f"the wheel's metadata and detector.__version__ differ: {version}"
    videos = sorted(p.name for p in (tmp_path / "runs").glob("*.mp4"))
    assert len(videos) == presets + 1, f"each run keeps its own numbered output: {videos}"
    d2go = [p for p in (tmp_path / "runs").glob("*.jsonl") if len(p.read_text().splitlines()) == 2]
    assert len(d2go) == 1 and '"name":"person"' in d2go[0].read_text()
