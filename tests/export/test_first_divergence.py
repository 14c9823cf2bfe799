"""The FP32 parity gate's refusal names the first node where the export departs from PyTorch."""

from __future__ import annotations

import json

import onnx
import pytest

from segdeploy.core.errors import ParityError
from segdeploy.core.parity import CaseReport, ParityReport, Tolerance
from segdeploy.export import exporter
from segdeploy.export.first_divergence import first_divergence
from segdeploy.export.node_scopes import torch_modules
from segdeploy.train.checkpoint import load_checkpoint
from tests.export.broken_int8 import with_weights_times

#: A convolution of the tiny U-Net's decoder (up3's first, its BatchNorm folded in), with five
#: convolutions after it; times :data:`DAMAGE` it moves the logits by about 1e-2, ten times the
#: FP32 tolerance (the untrained encoder's deeper layers barely reach the logits at all).
DAMAGED_MODULE = "up3.conv.0"
DAMAGE = 10.0


def _failed_report(tolerance: Tolerance, shape=(1, 3, 32, 48)) -> ParityReport:
    report = ParityReport("unet.onnx", tolerance)
    case = CaseReport(provider="cpu", input_shape=shape)
    case.failures.append("values: made up for the test")
    report.cases.append(case)
    return report


def _node_of(model: onnx.ModelProto, module: str) -> str:
    return next(name for name, m in torch_modules(model).items() if m == module)


@pytest.fixture(scope="module")
def unet(tiny_checkpoints, unet_onnx):
    model, card = load_checkpoint(tiny_checkpoints["unet"])
    return onnx.load(unet_onnx), model, card


def test_a_healthy_export_has_no_diverging_node(unet):
    # Every Conv of the U-Net has its BatchNorm folded in: paired with the Conv's own eager
    # output instead of the BatchNorm's, the first convolution would be named here.
    onnx_model, model, card = unet
    fp32 = _failed_report(Tolerance(atol=1e-3, rtol=1e-3, min_argmax_agreement=1.0))
    assert first_divergence(onnx_model, model, card.in_channels, fp32) is None


def test_the_damaged_conv_is_named_not_the_layers_after_it(unet):
    onnx_model, model, card = unet
    damaged = _node_of(onnx_model, DAMAGED_MODULE)
    broken = with_weights_times(onnx_model, damaged, DAMAGE)
    fp32 = _failed_report(Tolerance(atol=1e-3, rtol=1e-3, min_argmax_agreement=1.0))
    found = first_divergence(broken, model, card.in_channels, fp32)
    assert (found.node, found.module, found.op_type) == (damaged, DAMAGED_MODULE, "Conv")
    assert found.relative_error == pytest.approx(DAMAGE - 1, rel=1e-3)  # its output times 10
    assert found.pairs_checked > 40


def test_export_refuses_and_names_the_layer_it_diverges_at(tiny_checkpoints, tmp_path, monkeypatch):
    real_check = exporter.check_parity

    def damage_then_check(onnx_model, *args, **kwargs):
        # The staged graph is edited just before the gate, as a miscompiled layer would be.
        node = _node_of(onnx_model, DAMAGED_MODULE)
        onnx_model.CopyFrom(with_weights_times(onnx_model, node, DAMAGE))
        return real_check(onnx_model, *args, **kwargs)

    monkeypatch.setattr(exporter, "check_parity", damage_then_check)
    out = tmp_path / "unet.onnx"
    with pytest.raises(ParityError) as refused:
        exporter.export_checkpoint(
            tiny_checkpoints["unet"], out, shapes=[(1, 32, 48)], providers=["cpu"]
        )
    sentence, node_line = str(refused.value).split("\n")
    assert sentence.startswith("ONNX Runtime disagrees with PyTorch, so")
    assert node_line.startswith("first diverging node: node_Conv_")
    assert f"from torch module '{DAMAGED_MODULE}'" in node_line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unet.parity.rejected.json"]
    rejected = json.loads((tmp_path / "unet.parity.rejected.json").read_text())
    assert rejected["context"]["first_divergence"]["module"] == DAMAGED_MODULE
