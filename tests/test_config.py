from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from detector.config import DetectorConfig, load_config
from detector.errors import ConfigError
from detector.models import MODELS

from .conftest import ROOT

PRESETS = {
    "fasterrcnn_resnet50_fpn": "faster_rcnn_r50_fpn.yaml",
    "fasterrcnn_resnet50_fpn_v2": "faster_rcnn_r50_fpn_v2.yaml",
    "retinanet_resnet50_fpn": "retinanet_r50_fpn.yaml",
    "retinanet_resnet50_fpn_v2": "retinanet_r50_fpn_v2.yaml",
}


def test_every_registry_model_has_a_preset() -> None:
    assert set(PRESETS) == set(MODELS)


@pytest.mark.parametrize("model", sorted(PRESETS))
def test_preset_matches_the_documented_defaults(model: str) -> None:
    cfg = load_config(ROOT / "configs" / PRESETS[model])
    assert cfg == DetectorConfig(model=model)


@pytest.mark.parametrize("model", sorted(PRESETS))
def test_preset_realises_torchvision_defaults(model: str) -> None:
    """The presets' knobs equal torchvision's own builder defaults, except the display
    threshold and RetinaNet's 300 detections per image (COCO AP counts the top 100)."""
    import inspect

    spec = MODELS[model]
    kwargs = spec.build_kwargs(load_config(ROOT / "configs" / PRESETS[model]), 91)
    model_cls = spec.builder(weights=None, weights_backbone=None, num_classes=91).__class__
    defaults = {k: p.default for k, p in inspect.signature(model_cls.__init__).parameters.items()}
    for key, value in kwargs.items():
        if key in ("weights", "weights_backbone", "num_classes", "box_score_thresh", "score_thresh"):
            continue
        if key == "detections_per_img":
            assert (defaults[key], value) == (300, 100)
            continue
        assert defaults[key] == value, key


def test_unknown_key_is_named_with_a_suggestion(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model: retinanet_resnet50_fpn\nscore_treshold: 0.3\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'score_treshold'.*did you mean 'score_threshold'"):
        load_config(path)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("score_threshold", 1.5, "score_threshold"),
        ("min_size", 0, "min_size"),
        ("min_size", 2000, "must not exceed max_size"),
        ("device", "gpu", "device"),
        ("precision", "int4", "precision"),
        ("max_detections", "many", "max_detections"),
        ("channels_last", "yes", "channels_last"),
        ("classes", [], "classes"),
    ],
)
def test_bad_values_are_one_line_errors(key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_config(None, {key: value})
    assert "\n" not in str(info.value)


def test_yaml_syntax_error_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listy)


def test_overrides_win_and_are_coerced(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("score_threshold: 0.3\nclasses: [person]\n")
    cfg = load_config(path, {"score_threshold": 1, "classes": "person, car", "device": None})
    assert cfg.score_threshold == 1.0 and isinstance(cfg.score_threshold, float)
    assert cfg.classes == ("person", "car")
    assert cfg.device == "auto"  # None overrides are ignored


def test_config_is_frozen_and_replace_validates() -> None:
    cfg = DetectorConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model = "x"  # type: ignore[misc]
    assert cfg.replace(score_threshold=0.05).score_threshold == 0.05
    with pytest.raises(ConfigError):
        cfg.replace(score_threshold=-1)
    with pytest.raises(ConfigError, match="unknown config key"):
        cfg.replace(colour="red")


def test_class_names_must_match_num_classes() -> None:
    with pytest.raises(ConfigError, match="num_classes is 3"):
        load_config(None, {"num_classes": 3, "class_names": ["bg", "cat"]})


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    assert load_config(path).model in MODELS
