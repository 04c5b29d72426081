"""Per-stage timings of one run: what ``--stats`` prints and writes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

STAGES = ("decode", "preprocess", "inference", "postprocess", "render", "write")


@dataclass
class Stats:
    """Per-stage durations (ms) and end-to-end figures of one run."""

    stages: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})
    latency_ms: list[float] = field(default_factory=list)
    """Capture (live) or decode (files) to the end of writing, per frame: the age of what is shown."""
    frames: int = 0
    seconds: float = 0.0

    def add(self, stage: str, seconds: float) -> None:
        self.stages[stage].append(seconds * 1000)

    def summary(self) -> dict[str, Any]:
        def describe(xs: list[float]) -> dict[str, float]:
            if not xs:
                return {"mean_ms": 0.0, "p50_ms": 0.0, "p95_ms": 0.0}
            a = np.asarray(xs)
            return {"mean_ms": float(a.mean()), "p50_ms": float(np.median(a)), "p95_ms": float(np.percentile(a, 95))}

        return {
            "frames": self.frames,
            "seconds": self.seconds,
            "fps": self.frames / self.seconds if self.seconds > 0 else 0.0,
            "latency": describe(self.latency_ms),
            "stages": {s: describe(v) for s, v in self.stages.items()},
        }

    def table(self) -> str:
        s = self.summary()
        rows = [f"{s['frames']} frames in {s['seconds']:.2f} s: {s['fps']:.2f} fps end to end",
                "stage          mean ms   p50 ms   p95 ms"]  # fmt: skip
        for name, d in [*s["stages"].items(), ("latency", s["latency"])]:
            rows.append(f"{name:12s} {d['mean_ms']:9.1f} {d['p50_ms']:8.1f} {d['p95_ms']:8.1f}")
        return "\n".join(rows)
