"""Evaluation outputs: results.json, metrics.json, report.md and precision-recall plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SinkError
from ..io.sinks import prepare_output, write_text_atomic
from .evaluator import EvalReport
from .scoring import ClassAP, Scores

LABELS = {
    "AP": "AP @[.50:.95]", "AP50": "AP @.50", "AP75": "AP @.75", "APs": "AP small", "APm": "AP medium",
    "APl": "AP large", "AR1": "AR @1", "AR10": "AR @10", "AR100": "AR @100", "ARs": "AR small",
    "ARm": "AR medium", "ARl": "AR large",
}  # fmt: skip


def ranked_classes(scores: Scores) -> list[ClassAP]:
    """Classes with ground truth, best AP first (ties by name)."""
    return sorted((c for c in scores.per_class if c.ap >= 0), key=lambda c: (-c.ap, c.name))


def per_class_table(scores: Scores) -> str:
    rows = ["| category | id | AP | AP50 | GT boxes |", "|---|---:|---:|---:|---:|"]
    for c in sorted(scores.per_class, key=lambda c: c.category_id):
        ap = f"{c.ap:.3f}" if c.ap >= 0 else "n/a"
        ap50 = f"{c.ap50:.3f}" if c.ap50 >= 0 else "n/a"
        rows.append(f"| {c.name} | {c.category_id} | {ap} | {ap50} | {c.ground_truth} |")
    return "\n".join(rows)


def console_table(scores: Scores) -> str:
    """Per-class AP in three columns for the terminal."""
    cells = [f"{c.name[:16]:16s} {c.ap:6.3f}" if c.ap >= 0 else f"{c.name[:16]:16s}    n/a" for c in scores.per_class]
    rows = [" | ".join(cells[i : i + 3]) for i in range(0, len(cells), 3)]
    return "per-class AP @[.50:.95]:\n" + "\n".join(rows)


def markdown(report: EvalReport) -> str:
    s = report.scores
    lines = [
        f"# COCO evaluation: {report.model}",
        "",
        f"{report.images} images, scored with {s.backend} ({s.seconds:.2f} s).",
        "",
        "| metric | value |",
        "|---|---:|",
        *[f"| {LABELS[k]} | {v:.3f} |" for k, v in s.metrics.items()],
        "",
    ]
    if report.speed is not None:
        sp = report.speed.as_dict()
        lines += [
            "## Speed",
            "",
            f"- model: {sp['model_ms_per_image']:.1f} ms/image",
            f"- total (decode, preprocess, model, postprocess, conversion): {sp['total_ms_per_image']:.1f} ms/image",
            f"- {sp['images_per_second']:.2f} images/s",
            "",
        ]
    ranked = ranked_classes(s)
    if ranked:
        best = ", ".join(f"{c.name} ({c.ap:.3f})" for c in ranked[:3])
        worst = ", ".join(f"{c.name} ({c.ap:.3f})" for c in ranked[-3:][::-1])
        lines += [f"Best classes: {best}. Worst: {worst}.", ""]
    lines += [
        "## Precision-recall",
        "",
        "![overall](pr_overall.png)",
        "",
        "![best and worst classes (at least 5 ground-truth boxes)](pr_classes.png)",
        "",
        "## Per-class AP",
        "",
        per_class_table(s),
        "",
        "## pycocotools summary",
        "",
        "```",
        s.summary.rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def _mean_curve(precision: np.ndarray) -> np.ndarray:
    """Precision per recall threshold of a [T, R, K] slice, averaged over IoUs and classes,
    skipping -1 (classes without ground truth), as COCOeval's AP does."""
    t, r, k = precision.shape
    p = np.where(precision > -1, precision, np.nan).transpose(1, 0, 2).reshape(r, t * k)
    if np.isnan(p).all():
        return np.zeros(r)
    return np.nanmean(p, axis=1)


def plot_pr(scores: Scores, out_dir: Path) -> list[Path]:
    # Figure + the Agg canvas directly: no pyplot, so a notebook's or app's backend is left alone
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def subplots(ncols: int = 1, **kw: Any) -> tuple[Figure, Any]:
        fig = Figure(**{k: v for k, v in kw.items() if k in ("figsize", "dpi")})
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, ncols, sharey=kw.get("sharey", False))
        return fig, axes

    rec = scores.recall_thresholds
    prec = scores.precision[:, :, :, 0, -1]  # [T, R, K], area all, 100 detections
    i50, i75 = (int(scores.iou_thresholds.searchsorted(t)) for t in (0.5, 0.75))
    paths = []

    fig, ax = subplots(figsize=(6, 5), dpi=100)
    for label, sl in (("IoU .50:.95", prec), ("IoU .50", prec[i50 : i50 + 1]), ("IoU .75", prec[i75 : i75 + 1])):
        curve = _mean_curve(sl)
        ax.plot(rec, curve, label=f"{label} (AP {curve.mean():.3f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="Precision-recall, all classes")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    paths.append(out_dir / "pr_overall.png")
    fig.savefig(paths[-1], bbox_inches="tight")

    # per-class curves at IoU .50 (averaging IoUs flattens them into steps), among classes with
    # enough ground truth for a curve to mean something
    ranked = [c for c in ranked_classes(scores) if c.ground_truth >= 5] or ranked_classes(scores)
    k_of = {c.category_id: k for k, c in enumerate(scores.per_class)}
    fig, axes = subplots(2, figsize=(11, 4.5), dpi=100, sharey=True)
    for ax, title, chosen in ((axes[0], "best classes", ranked[:5]), (axes[1], "worst classes", ranked[-5:][::-1])):
        for c in chosen:
            curve = _mean_curve(prec[i50 : i50 + 1, :, k_of[c.category_id] : k_of[c.category_id] + 1])
            ax.plot(rec, curve, label=f"{c.name}: AP {c.ap:.3f}, AP50 {c.ap50:.3f}, {c.ground_truth} GT")
        ax.set(xlabel="recall", xlim=(0, 1), ylim=(0, 1.02), title=f"Precision-recall at IoU .50, {title}")
        ax.grid(alpha=0.3)
        if chosen:
            ax.legend(loc="upper right", fontsize=8)
    axes[0].set_ylabel("precision")
    paths.append(out_dir / "pr_classes.png")
    fig.savefig(paths[-1], bbox_inches="tight")
    return paths


OUTPUT_FILES = ("results.json", "metrics.json", "report.md", "pr_overall.png", "pr_classes.png")


def check_out_dir(out_dir: Path, inputs: tuple[Path, ...] = ()) -> None:
    """Create ``out_dir`` and make sure it can be written, and that no output would replace an
    input -- before the model runs, so a bad ``--out`` costs no evaluation."""
    if out_dir.exists() and not out_dir.is_dir():
        raise SinkError(f"--out {out_dir} is a file; eval writes a folder of outputs, give a folder path")
    resolved = {p.resolve(): p for p in inputs}
    for name in OUTPUT_FILES:
        hit = resolved.get((out_dir / name).resolve())
        if hit is not None:
            raise SinkError(f"--out {out_dir} would overwrite the input {hit}; choose another --out folder")
    prepare_output(out_dir / "metrics.json")  # creates the folder and checks it can be written


def write_outputs(report: EvalReport, out_dir: Path, *, write_results: bool = True) -> list[Path]:
    """Write results.json (when the detections are ours), metrics.json, report.md and the plots,
    each under a temporary name renamed into place."""
    check_out_dir(out_dir)
    written = []
    if write_results:
        written.append(out_dir / "results.json")
        write_text_atomic(written[-1], json.dumps(report.results))
    written.append(out_dir / "metrics.json")
    write_text_atomic(written[-1], json.dumps(report.to_dict(), indent=2) + "\n")
    written.append(out_dir / "report.md")
    write_text_atomic(written[-1], markdown(report))
    written += plot_pr(report.scores, out_dir)
    return written
