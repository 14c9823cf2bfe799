"""The parity suite: ONNX Runtime against PyTorch logits for every registered architecture.

Generated from the registry: every arch (tiny variant) x shapes other than the traced (2, 64, 64)
x every provider. A registered arch without a parity case fails the suite. Full-size models run
under the ``slow`` marker.
"""

from __future__ import annotations

import pytest

from segdeploy.models import get_spec, list_models
from segdeploy.runtime.session import usable_providers

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from segdeploy.core.card import ModelCard  # noqa: E402
from segdeploy.export import check_parity, simplify, to_onnx  # noqa: E402
from segdeploy.models import create_model  # noqa: E402

#: (batch, height, width) per arch: the smallest legal size, non-square, batch 1 and batch > 1.
PARITY_SHAPES = {
    "unet": [(1, 16, 16), (1, 48, 80), (3, 64, 32), (2, 96, 48)],
    "deeplabv3_resnet50": [(1, 16, 16), (1, 48, 80), (3, 64, 32)],
    "deeplabv3_mobilenet_v3_large": [(1, 16, 16), (1, 48, 80), (3, 64, 32)],
    "resnet18": [(1, 16, 16), (1, 48, 80), (4, 64, 32)],
    # Size multiple 32: the smallest legal size, then multiples of 32 that are not of 64.
    "segformer": [(1, 32, 32), (1, 96, 160), (3, 32, 96)],
}
PROVIDERS = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def test_every_registered_arch_has_a_parity_case():
    assert set(PARITY_SHAPES) == set(list_models())


def _export(arch: str, variant: str):
    spec = get_spec(arch)
    kwargs = spec.variant_kwargs(variant)
    torch.manual_seed(0)
    model = create_model(arch, num_classes=4, **kwargs).eval()
    card = ModelCard(
        arch=arch,
        task=spec.task,
        class_names=("a", "b", "c", "d"),
        model_kwargs=kwargs,
        size_multiple=spec.size_multiple,
    )
    graph, _, note = simplify(to_onnx(model, card), card)
    return model, card, graph, note


@pytest.fixture(scope="module", params=list_models())
def tiny_export(request):
    return request.param, *_export(request.param, get_spec(request.param).smallest_variant)


def _skip_unless_usable(provider: str) -> None:
    if provider not in usable_providers():
        pytest.skip(f"no usable {provider.upper()} execution provider on this machine")


@pytest.mark.parametrize("provider", PROVIDERS)
def test_onnx_matches_pytorch(tiny_export, provider):
    _skip_unless_usable(provider)
    arch, model, card, graph, note = tiny_export
    assert note == "simplified"
    report = check_parity(graph, model, card, PARITY_SHAPES[arch], [provider], name=arch)
    assert report.passed, report.failures()
    assert len(report.cases) == len(PARITY_SHAPES[arch])
    for case in report.cases:
        assert case.max_abs_error < report.tolerance.atol
        assert case.argmax_agreement >= 0.999


@pytest.mark.slow
@pytest.mark.parametrize("arch", list_models())
def test_full_size_onnx_matches_pytorch(arch):
    model, card, graph, _ = _export(arch, "full")
    shapes = [(1, 64, 96), (2, 32, 32)]  # multiples of 32: legal for every arch
    report = check_parity(graph, model, card, shapes, usable_providers(), name=arch)
    assert report.passed, report.failures()


def test_a_wrong_graph_is_caught_in_every_layer(tiny_export):
    arch, model, card, graph, _ = tiny_export
    if arch != "unet":
        pytest.skip("one architecture is enough to exercise the failure layers")
    renamed = onnx.ModelProto()
    renamed.CopyFrom(graph)
    renamed.graph.output[0].name = "scores"
    report = check_parity(renamed, model, card, [(1, 32, 32)], ["cpu"])
    assert not report.passed
    assert report.structural_failures == ["output names: expected ['logits'], found ['scores']"]

    frozen = onnx.ModelProto()
    frozen.CopyFrom(graph)
    frozen.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 64
    report = check_parity(frozen, model, card, [(1, 32, 32)], ["cpu"])
    assert any("input dims" in f and "16*h" in f for f in report.structural_failures)

    # A model whose weights differ fails on values and names how far off it is.
    torch.manual_seed(99)
    other = create_model(arch, num_classes=4, **card.model_kwargs).eval()
    report = check_parity(graph, other, card, [(1, 32, 32), (2, 48, 16)], ["cpu"])
    assert not report.passed and len(report.cases) == 2
    assert all(c.atol_needed > report.tolerance.atol for c in report.cases)
    assert "needs atol" in report.failures()[0]

    report = check_parity(graph, model, card, [(1, 30, 32)], ["cpu"])
    assert "multiples of 16" in report.structural_failures[0]


def test_cuda_is_refused_in_one_sentence_where_ort_cannot_list_node_placement(
    tiny_export, monkeypatch
):
    # Before 1.23 ONNX Runtime had no node assignment listing: "no compute node on the CPU"
    # would hold for every graph, so the CUDA case must fail rather than pass unchecked.
    import onnxruntime as ort

    from segdeploy.export import parity_gate

    arch, model, card, graph, _ = tiny_export
    if arch != "unet":
        pytest.skip("one architecture is enough")
    api = parity_gate.ASSIGNMENT_API
    owner = next(c for c in ort.InferenceSession.__mro__ if api in vars(c))
    monkeypatch.delattr(owner, api)
    monkeypatch.setattr(ort, "__version__", "1.22.0")
    report = check_parity(graph, model, card, [(1, 32, 32)], ["cuda", "cpu"])
    assert not report.passed and [c.provider for c in report.cases] == ["cpu"]
    assert report.structural_failures == [
        "cuda: onnxruntime 1.22.0 cannot list which nodes run on the CPU (its InferenceSession "
        "has no get_provider_graph_assignment_info, new in 1.23), so a CUDA result could be "
        "partly the CPU's; install onnxruntime-gpu>=1.23, or gate on the cpu provider"
    ]
    assert parity_gate.placement_unknown() is not None
    monkeypatch.undo()
    assert parity_gate.placement_unknown() is None  # this ONNX Runtime lists placement
