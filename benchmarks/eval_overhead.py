"""Where the time of a COCO evaluation goes, on ../shared/data/coco-mini with the
TorchScript model: model forward vs everything else (dataset loading, image
decoding, preprocessing, conversion to COCO results, scoring), and the scoring
time of pycocotools vs faster-coco-eval (same numbers).

    .venv/bin/python benchmarks/eval_overhead.py [--repeat 2]
"""

from __future__ import annotations

import argparse
import time

from common import SHARED, TORCHSCRIPT, machine, median

from detector import Detector, load_config
from detector.eval import CocoEvaluator, load_dataset, score

ANN = SHARED / "data" / "coco-mini" / "annotations" / "instances_val2017.json"
IMAGES = SHARED / "data" / "coco-mini" / "val2017"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    t = time.perf_counter()
    detector = Detector.from_config(load_config(None, {"model": str(TORCHSCRIPT), "score_threshold": 0.0}))
    model_load = time.perf_counter() - t
    print(f"# COCO eval overhead, coco-mini (80 images), {machine()}")
    print(f"model load (TorchScript, once): {model_load:.2f} s\n")
    print("| backend | wall s | model forward s | other s | other % of wall | scoring s |")
    print("|---|---:|---:|---:|---:|---:|")
    for backend in ("pycocotools", "faster-coco-eval"):
        for _ in range(args.repeat):
            start = time.perf_counter()
            dataset = load_dataset(ANN, IMAGES)
            report = CocoEvaluator(dataset, class_names=detector.class_names, backend=backend).evaluate(
                detector, progress=False
            )
            wall = time.perf_counter() - start
            assert report.speed is not None
            model = report.speed.model_seconds
            print(f"| {backend} | {wall:.2f} | {model:.2f} | {wall - model:.2f} | {100 * (wall - model) / wall:.1f}% "
                  f"| {report.scores.seconds:.3f} |", flush=True)  # fmt: skip
    dataset = load_dataset(ANN)
    print("\nscoring alone, median of 5 (same results list):")
    for backend in ("pycocotools", "faster-coco-eval"):
        times = [score(dataset.coco, report.results, dataset.image_ids, backend).seconds for _ in range(5)]
        print(f"- {backend}: {1000 * median(times):.0f} ms")


if __name__ == "__main__":
    main()
