"""Artifact naming, precisions and the ``--shapes`` syntax."""

from __future__ import annotations

from pathlib import Path

import pytest

from segdeploy.core.artifacts import (
    PRECISIONS,
    default_export_path,
    format_shapes,
    is_variant,
    parity_report_path,
    parse_shapes,
    variant_path,
)
from segdeploy.core.errors import SegdeployError


def test_variants_sit_beside_their_fp32_export():
    assert variant_path("exports/road.v2.onnx", "int8") == Path("exports/road.v2.int8.onnx")
    assert variant_path("exports/road.onnx", "fp32") == Path("exports/road.onnx")
    assert [is_variant(variant_path("m.onnx", p)) for p in PRECISIONS] == [False, True, True, True]
    assert not is_variant("road.v2.onnx")  # a dot in the name does not make a variant
    assert parity_report_path("exports/unet.onnx") == Path("exports/unet.parity.json")
    assert default_export_path("runs/x/unet.pt") == Path("exports/unet.onnx")


def test_shapes_round_trip_and_bad_ones_are_one_sentence():
    shapes = parse_shapes("16x16, 48x80,3x64x32")
    assert shapes == [(1, 16, 16), (1, 48, 80), (3, 64, 32)]
    assert parse_shapes(format_shapes(shapes)) == shapes
    for text in ("big", "0x16", "1x2x3x4", ","):
        with pytest.raises(SegdeployError):
            parse_shapes(text)
