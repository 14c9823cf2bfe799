"""DeepLabV3 from local torchvision-format files, its fine-tuning policies, and the refusal to
freeze a randomly initialised backbone.

The weight files are made here from torchvision models built with ``weights=None``: nothing is
downloaded, and the files have exactly torchvision's key layout.
"""

from __future__ import annotations

import pytest
import torch
import torchvision.models.segmentation as tvseg
from torchvision.models import mobilenet_v3_large
from torchvision.models.resnet import Bottleneck, ResNet

from segdeploy.core.errors import SegdeployError
from segdeploy.models import create_model, get_spec
from segdeploy.models.deeplab import CLASS_LAYERS
from segdeploy.models.registry import resolve_finetune

MOBILENET = "deeplabv3_mobilenet_v3_large"
RESNET = "deeplabv3_resnet50"


def _save(state: dict, path) -> str:
    torch.save(state, path)
    return str(path)


def _trainable(model: torch.nn.Module) -> dict[str, int]:
    """Trainable parameter count per top-level part (backbone blocks counted one by one)."""
    counts: dict[str, int] = {}
    for name, param in model.named_parameters():
        parts = name.split(".")
        key = ".".join(parts[:2]) if parts[0] == "backbone" else parts[0]
        counts[key] = counts.get(key, 0) + (param.numel() if param.requires_grad else 0)
    return counts


def _coco_style(arch: str, path) -> tuple[dict, str]:
    """Full torchvision segmentation weights for 21 classes (COCO/VOC layout), saved to ``path``."""
    torch.manual_seed(0)
    build = getattr(tvseg, arch)
    source = build(weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
    return source.state_dict(), _save(source.state_dict(), path)


@pytest.fixture(scope="module")
def coco_style(tmp_path_factory):
    """DeepLabV3-MobileNetV3 (~11M params) segmentation weights, shared by several tests."""
    return _coco_style(MOBILENET, tmp_path_factory.mktemp("weights") / "dlv3_coco.pth")


@pytest.mark.parametrize("arch", [MOBILENET, RESNET])
def test_full_segmentation_weights_keep_all_but_the_class_layers(arch, tmp_path):
    # ResNet-50 has no small torchvision-built file (42M params, ~3 s): fast enough to check once.
    source, path = _coco_style(arch, tmp_path / "dlv3_coco.pth")
    model = create_model(arch, num_classes=3)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    get_spec(arch).load_pretrained(model, path)
    loaded = model.state_dict()
    for key, value in loaded.items():
        if key.startswith(CLASS_LAYERS):
            # Reset for 3 classes: the fresh initialisation, not the file's 21-way layer.
            assert value.shape[0] == 3 and torch.equal(value, fresh[key]), key
        else:
            assert torch.equal(value, source[key]), key
    assert sum(k.startswith("backbone.") for k in loaded) > 100


def test_a_wrapped_file_is_unwrapped(coco_style, tmp_path):
    source, _ = coco_style
    path = _save({"model": source, "epoch": 3}, tmp_path / "wrapped.pth")
    model = create_model(MOBILENET, num_classes=3)
    get_spec(MOBILENET).load_pretrained(model, path)
    assert torch.equal(model.backbone["0"][0].weight, source["backbone.0.0.weight"])


def test_mobilenet_backbone_only_imagenet_weights(tmp_path):
    torch.manual_seed(1)
    imagenet = mobilenet_v3_large(weights=None, width_mult=0.25)  # the tiny variant's width
    path = _save(imagenet.state_dict(), tmp_path / "mnv3_imagenet.pth")
    model = create_model(MOBILENET, num_classes=4, width_mult=0.25)
    head = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    get_spec(MOBILENET).load_pretrained(model, path)
    state = model.state_dict()
    for key, value in imagenet.state_dict().items():
        if key.startswith("features."):
            assert torch.equal(state["backbone." + key.removeprefix("features.")], value), key
    assert all(torch.equal(state[k], v) for k, v in head.items())  # both heads stay fresh


def test_resnet50_backbone_only_imagenet_weights(tmp_path):
    torch.manual_seed(2)
    imagenet = ResNet(Bottleneck, [1, 1, 1, 1])  # torchvision's resnet50 at the tiny depth
    path = _save(imagenet.state_dict(), tmp_path / "r50_imagenet.pth")
    model = create_model(RESNET, num_classes=4, layers=[1, 1, 1, 1])
    get_spec(RESNET).load_pretrained(model, path)
    state = model.state_dict()
    backbone = [k for k in imagenet.state_dict() if not k.startswith("fc.")]
    assert all(torch.equal(state["backbone." + k], imagenet.state_dict()[k]) for k in backbone)
    assert len(backbone) == sum(k.startswith("backbone.") for k in state)


def test_files_that_do_not_fit_name_the_file_and_keys(coco_style, tmp_path):
    _, full_path = coco_style
    tiny = create_model(MOBILENET, num_classes=3, width_mult=0.25)
    # Full-width weights into the quarter-width variant: the shapes differ.
    with pytest.raises(SegdeployError, match=r"dlv3_coco\.pth does not fit .*wrong shape: "):
        get_spec(MOBILENET).load_pretrained(tiny, full_path)
    # A ResNet-50 backbone file into the MobileNetV3 model: its own key names are reported.
    r50 = _save(ResNet(Bottleneck, [1, 1, 1, 1]).state_dict(), tmp_path / "r50.pth")
    with pytest.raises(SegdeployError) as err:
        get_spec(MOBILENET).load_pretrained(tiny, r50)
    message = str(err.value)
    assert "r50.pth does not fit a DeepLabV3 MobileNetV3-Large backbone" in message
    assert "missing: features.0.0.weight" in message and "unexpected: bn1." in message
    assert message.count("\n") == 0 and message.count(" ...") == 2  # first three of each only
    unet = create_model("unet", num_classes=3, features=(8, 16, 32, 64)).state_dict()
    with pytest.raises(SegdeployError, match=r"unet\.pth does not fit a DeepLabV3 ResNet-50"):
        get_spec(RESNET).load_pretrained(
            create_model(RESNET, num_classes=3, layers=[1, 1, 1, 1]),
            _save(unet, tmp_path / "unet.pth"),
        )


@pytest.mark.parametrize(
    ("arch", "kwargs", "last"),
    [
        (RESNET, {"layers": [1, 1, 1, 1]}, {"backbone.layer4"}),
        (
            MOBILENET,
            {"width_mult": 0.25},
            {"backbone.13", "backbone.14", "backbone.15", "backbone.16"},
        ),
    ],
)
def test_policies_freeze_what_they_say(arch, kwargs, last):
    spec = get_spec(arch)
    model = create_model(arch, num_classes=3, **kwargs)
    heads = {"classifier", "aux_classifier"}
    for policy, trained in (("head", heads), ("head+last", heads | last), ("all", None)):
        spec.finetune(model, policy)
        counts = _trainable(model)
        trainable = {part for part, n in counts.items() if n}
        assert trainable == (trained or set(counts)), policy
    with pytest.raises(SegdeployError, match="unknown fine-tuning policy 'fc'"):
        spec.finetune(model, "fc")


def test_head_policy_changes_only_the_heads_in_a_training_step():
    from segdeploy.train import freeze_frozen_batchnorm

    model = create_model(MOBILENET, num_classes=3, width_mult=0.25)
    get_spec(MOBILENET).finetune(model, "head")
    model.train()
    freeze_frozen_batchnorm(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out, aux = model.forward_with_aux(torch.randn(2, 3, 64, 64))
    (out.mean() + aux.mean()).backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    after = model.state_dict()
    changed = {k.split(".")[0] for k, v in after.items() if not torch.equal(v, before[k])}
    assert changed == {"classifier", "aux_classifier"}  # BatchNorm statistics included


@pytest.mark.parametrize("arch", [RESNET, MOBILENET, "resnet18"])
def test_frozen_policies_need_pretrained_weights(arch):
    spec = get_spec(arch)
    head, *frozen = [p for p in spec.finetune_policies if p != "all"]
    assert resolve_finetune(spec, None, pretrained=True) == head
    assert resolve_finetune(spec, None, pretrained=False) == "all"
    assert resolve_finetune(spec, "all", pretrained=False) == "all"
    for policy in (head, *frozen):
        assert resolve_finetune(spec, policy, pretrained=True) == policy
        with pytest.raises(SegdeployError) as err:
            resolve_finetune(spec, policy, pretrained=False)
        assert str(err.value).startswith("freezing a randomly initialised backbone trains only ")
        assert str(err.value).endswith("; pass --pretrained PATH or --finetune all")
    with pytest.raises(SegdeployError, match="has no fine-tuning policy 'layer9'"):
        resolve_finetune(spec, "layer9", pretrained=True)


def test_architectures_without_policies_train_everything():
    spec = get_spec("unet")
    assert resolve_finetune(spec, None, pretrained=False) == "all"
    with pytest.raises(SegdeployError, match="'unet' has no fine-tuning policy 'head'"):
        resolve_finetune(spec, "head", pretrained=True)
