"""The FP32 parity gate's refusal names the first node where the export departs from PyTorch."""

from __future__ import annotations

import json

import onnx
import pytest
import torch
from broken_int8 import with_weights_times

from segdeploy.core.parity import CaseReport, ParityReport, Tolerance
from segdeploy.export import exporter
from segdeploy.export.first_divergence import first_divergence
from segdeploy.export.node_scopes import torch_modules
from segdeploy.train.checkpoint import load_checkpoint, save_checkpoint

#: A convolution of the tiny U-Net's decoder (up3's first, its BatchNorm folded in), with five
#: convolutions after it; times :data:`DAMAGE` it moves the logits by about 1e-2, ten times the
#: FP32 tolerance (the untrained encoder's deeper layers barely reach the logits at all).
DAMAGED_MODULE = "up3.conv.0"
DAMAGE = 10.0
SHAPES = [(1, 32, 48)]


def _failed_report(tolerance: Tolerance, shape=(1, 3, 32, 48)) -> ParityReport:
    report = ParityReport("unet.onnx", tolerance)
    case = CaseReport(provider="cpu", input_shape=shape)
    case.failures.append("values: made up for the test")
    report.cases.append(case)
    return report


def _node_of(model: onnx.ModelProto, module: str) -> str:
    return next(name for name, m in torch_modules(model).items() if m == module)


def _with_real_batch_norms(checkpoint, folder):
    """A copy of the tiny U-Net checkpoint whose BatchNorms are not the identity (an untrained
    one's are: mean 0, variance 1, scale 1, shift 0), so that a Conv's output and the BatchNorm
    folded into it differ."""
    model, card = load_checkpoint(checkpoint)
    generator = torch.Generator().manual_seed(7)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(0.2 * torch.randn(n, generator=generator))
            module.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=generator))
            module.weight.data.copy_(0.5 + torch.rand(n, generator=generator))
            module.bias.data.copy_(0.1 * torch.randn(n, generator=generator))
    return save_checkpoint(model, card, folder / "unet-bn.pt")


@pytest.fixture(scope="module")
def unet(tiny_checkpoints, tmp_path_factory):
    folder = tmp_path_factory.mktemp("first-divergence")
    checkpoint = _with_real_batch_norms(tiny_checkpoints["unet"], folder)
    result = exporter.export_checkpoint(
        checkpoint, folder / "unet-bn.onnx", shapes=SHAPES, providers=["cpu"]
    )
    model, card = load_checkpoint(checkpoint)
    return checkpoint, onnx.load(result.onnx_path), model, card


def test_a_healthy_export_has_no_diverging_node(unet):
    # Every Conv of the U-Net has its BatchNorm folded in: paired with the Conv's own eager
    # output instead of the BatchNorm's, the first convolution would be named here.
    _, onnx_model, model, card = unet
    fp32 = _failed_report(Tolerance(atol=1e-3, rtol=1e-3, min_argmax_agreement=1.0))
    assert first_divergence(onnx_model, model, card.in_channels, fp32) is None


def test_the_damaged_conv_is_named_not_the_layers_after_it(unet):
    _, onnx_model, model, card = unet
    damaged = _node_of(onnx_model, DAMAGED_MODULE)
    broken = with_weights_times(onnx_model, damaged, DAMAGE)
    fp32 = _failed_report(Tolerance(atol=1e-3, rtol=1e-3, min_argmax_agreement=1.0))
    found = first_divergence(broken, model, card.in_channels, fp32)
    assert (found.node, found.module, found.op_type) == (damaged, DAMAGED_MODULE, "Conv")
    assert found.relative_error > 1  # weights times 10, the folded BatchNorm's shift kept
    assert found.pairs_checked > 40


def test_export_refuses_and_names_the_layer_it_diverges_at(unet, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from segdeploy.cli import app

    real_check = exporter.check_parity

    def damage_then_check(onnx_model, *args, **kwargs):
        # The graph is edited just before the gate, as a miscompiled layer would be.
        node = _node_of(onnx_model, DAMAGED_MODULE)
        onnx_model.CopyFrom(with_weights_times(onnx_model, node, DAMAGE))
        return real_check(onnx_model, *args, **kwargs)

    monkeypatch.setattr(exporter, "check_parity", damage_then_check)
    out = tmp_path / "unet.onnx"
    args = ["export", str(unet[0]), "--out", str(out), "--shapes", "32x48"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "1000"})
    assert result.exit_code == 1, result.output
    assert "disagrees with PyTorch, so" in result.output and "Traceback" not in result.output
    node = _node_of(unet[1], DAMAGED_MODULE)
    assert f"first diverging node: {node} (Conv) from torch module '{DAMAGED_MODULE}'" in (
        " ".join(result.output.split())
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unet.parity.rejected.json"]
    rejected = json.loads((tmp_path / "unet.parity.rejected.json").read_text())
    assert rejected["context"]["first_divergence"]["module"] == DAMAGED_MODULE
