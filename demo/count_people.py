"""People per second of video: count the people in every frame, average them per second.

python demo/count_people.py [VIDEO] [--model d2go] [--score 0.6]
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict

import detector


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("video", nargs="?", default=str(detector.DEMO_CLIP))
    ap.add_argument("--model", default="d2go")
    ap.add_argument("--score", type=float, default=0.6)
    args = ap.parse_args()
    try:
        model = detector.load(args.model, classes="person", score_threshold=args.score)
        per_second: dict[int, list[int]] = defaultdict(list)
        with detector.stream(model, args.video) as results:
            for frame, people in results:
                per_second[int(frame.timestamp)].append(len(people))
    except detector.DetectorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for second, counts in sorted(per_second.items()):
        print(f"{second:4d} s: {sum(counts) / len(counts):5.1f} people on average ({len(counts)} frames)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
