"""The README's Python snippets and the demo apps run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import COCO_MINI, DEMO, ROOT, SHARED, need

SNIPPETS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def run_python(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, timeout=600)


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_readme_snippet_runs(index: int, tmp_path: Path) -> None:
    """Run from a folder beside ../shared, as from the checkout; only ../shared paths are adapted."""
    code = SNIPPETS[index].replace("../shared", str(need(SHARED)))
    need(COCO_MINI)
    res = run_python(["-c", code], tmp_path)
    assert res.returncode == 0, f"README snippet {index} failed:\n{code}\n{res.stderr[-3000:]}"


def test_the_readme_has_snippets() -> None:
    assert len(SNIPPETS) >= 4


def test_demo_apps_run_as_written(tmp_path: Path) -> None:
    res = run_python([str(ROOT / "demo" / "count_people.py")], tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    seconds = [line for line in res.stdout.splitlines() if "people on average" in line]
    assert len(seconds) == 6, res.stdout  # the 6 s demo clip
    assert max(float(line.split(":")[1].split()[0]) for line in seconds) >= 2, "the plaza has people"
    res = run_python([str(ROOT / "demo" / "first_50_frames.py")], tmp_path)
    assert res.returncode == 0 and "50 frames" in res.stdout and "threads left: []" in res.stdout, res.stderr
    out = tmp_path / "own.mp4"
    res = run_python([str(ROOT / "demo" / "own_loop.py"), str(DEMO), str(out)], tmp_path)
    assert res.returncode == 0 and out.stat().st_size > 100_000, res.stderr[-2000:]
    res = run_python([str(ROOT / "demo" / "video_file.py"), str(DEMO), str(tmp_path / "v.mp4")], tmp_path)
    assert res.returncode == 0 and res.stdout.count("frame ") == 60, res.stderr[-2000:]
    res = run_python([str(ROOT / "demo" / "webcam.py"), "--camera", "7"], tmp_path)
    assert res.returncode == 2 and res.stderr.startswith("error: camera 7 cannot be opened"), res.stderr
