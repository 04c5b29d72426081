from __future__ import annotations

import numpy as np

from detector import Detections, annotate
from detector.render import BoxAnnotator, LabelAnnotator, class_color
from detector.render.annotators import line_thickness


def dets() -> Detections:
    return Detections(np.array([[20, 30, 120, 150], [0, 0, 40, 25]], np.float32), [0.9, 0.4], [1, 3])


def test_annotate_draws_on_a_copy() -> None:
    frame = np.full((240, 320, 3), 90, np.uint8)
    out = annotate(frame, dets())
    assert out.shape == frame.shape and out.dtype == np.uint8
    assert (frame == 90).all(), "the input frame must stay untouched"
    assert (out != frame).any()
    # the box outline of the person is drawn in its class colour
    edge = out[60:120, 18:23].reshape(-1, 3)
    assert (edge == np.array(class_color(1), np.uint8)).all(axis=1).any()
    # the label tag sits above the box
    assert (out[5:28, 22:60] != 90).any()


def test_in_place_and_composition() -> None:
    frame = np.zeros((240, 320, 3), np.uint8)
    out = annotate(frame, dets(), [BoxAnnotator(thickness=3)], copy=False)
    assert out is frame and frame.any()
    boxes_only = annotate(np.zeros_like(frame), dets(), [BoxAnnotator(thickness=3)])
    with_labels = annotate(np.zeros_like(frame), dets(), [BoxAnnotator(thickness=3), LabelAnnotator()])
    assert (with_labels != boxes_only).any()


def test_empty_detections_leave_the_frame_unchanged() -> None:
    frame = np.random.default_rng(0).integers(0, 255, (50, 60, 3), dtype=np.uint8)
    assert (annotate(frame, Detections.empty()) == frame).all()


def test_boxes_at_and_beyond_the_edges_do_not_fail() -> None:
    frame = np.zeros((20, 30, 3), np.uint8)
    edge = Detections(np.array([[-5, -5, 40, 40], [29, 19, 30, 20]], np.float32), [0.5, 0.7], [1, 90])
    out = annotate(frame, edge)
    assert out.shape == frame.shape


def test_colours_are_deterministic_and_distinct() -> None:
    colours = [class_color(i) for i in range(1, 91)]
    class_color.cache_clear()  # recomputed, not the cached objects compared with themselves
    assert colours == [class_color(i) for i in range(1, 91)]
    assert colours[0] == (242, 48, 131)  # fixed across runs and versions: person (BGR) stays this purple
    for a, b in zip(colours, colours[1:], strict=False):
        assert sum(abs(x - y) for x, y in zip(a, b, strict=True)) > 60, "neighbouring ids must look different"


def test_line_width_scales_with_frame() -> None:
    assert line_thickness(np.zeros((240, 320, 3), np.uint8)) == 1
    assert line_thickness(np.zeros((576, 768, 3), np.uint8)) == 2
    assert line_thickness(np.zeros((2160, 3840, 3), np.uint8)) >= 7
