"""The model card: JSON round-trip and validation."""

from __future__ import annotations

import pytest

from segdeploy.core.card import ModelCard
from segdeploy.core.errors import SegdeployError

NAMES = ("background", "road", "vehicle", "pedestrian")


def make_card(**changes):
    fields = {
        "arch": "unet",
        "task": "segmentation",
        "class_names": NAMES,
        "model_kwargs": {"features": [8, 16, 32, 64]},
        "training": {"epochs": 3, "best_metric": 0.91},
    }
    return ModelCard(**{**fields, **changes})


def test_json_round_trip_is_exact():
    card = make_card()
    again = ModelCard.from_json(card.to_json())
    assert again == card
    assert again.num_classes == 4
    assert again.size_multiple == 16


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"task": "detection"}, "task must be one of"),
        ({"class_names": ("only",)}, "at least 2 class names"),
        ({"class_names": ("a", "a")}, "unique"),
        ({"model_kwargs": {"num_classes": 4}}, "must not hold num_classes"),
        ({"mean": (0.5, 0.5)}, "mean and std need 3 values"),
        ({"std": (0.2, 0.0, 0.2)}, "std values must be positive"),
        ({"format_version": 99}, "newer than this segdeploy"),
    ],
)
def test_contradictions_raise(changes, message):
    with pytest.raises(SegdeployError, match=message):
        make_card(**changes)


def test_from_dict_names_its_source():
    data = make_card().to_dict()
    data["colour"] = "blue"
    with pytest.raises(SegdeployError, match=r"^model\.onnx: unknown model card fields"):
        ModelCard.from_dict(data, source="model.onnx")
    with pytest.raises(SegdeployError, match="not valid JSON"):
        ModelCard.from_json("{", source="x")
    with pytest.raises(SegdeployError, match="lacks fields"):
        ModelCard.from_dict({"arch": "unet"}, source="x")


def test_card_from_metadata_is_the_one_reader_with_one_wording():
    from segdeploy.core.card import ONNX_METADATA_KEY, card_from_metadata

    card = make_card()
    assert card_from_metadata({ONNX_METADATA_KEY: card.to_json()}, "m.onnx") == card
    with pytest.raises(
        SegdeployError, match=r"^ONNX file m\.onnx: expected a segdeploy model card"
    ):
        card_from_metadata({}, "m.onnx")
    with pytest.raises(SegdeployError, match=r"^ONNX file m\.onnx: model card is not valid JSON"):
        card_from_metadata({ONNX_METADATA_KEY: "{"}, "m.onnx")
