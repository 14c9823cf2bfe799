"""torchvision DeepLabV3 with ResNet-50 or MobileNetV3-Large backbones, never downloading weights.

The networks are composed from torchvision's own classes exactly as its
``deeplabv3_resnet50`` / ``deeplabv3_mobilenet_v3_large`` builders do (same module tree, same
state-dict keys, so torchvision checkpoints load), but:

* no argument can trigger a download (the builders fetch ImageNet backbone weights unless told
  ``weights_backbone=None``, and nothing can be downloaded here);
* the backbone depth/width is configurable, which gives small variants for fast tests;
* ``forward`` returns the main logits tensor only; the auxiliary head is evaluated by
  :meth:`DeepLabSegmenter.forward_with_aux` for the training loss and never exported.

``--pretrained PATH`` takes a local torchvision-format file of either kind (see
:func:`load_pretrained_deeplab`), and the fine-tuning policies are ``head``, ``head+last`` and
``all`` (see :data:`FINETUNE_POLICIES`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import mobilenet_v3_large
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import Bottleneck, ResNet
from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3
from torchvision.models.segmentation.fcn import FCNHead

from segdeploy.models.pretrained import check_state_keys, freeze_by_prefix, read_state_dict
from segdeploy.models.registry import register_model

#: The final 1x1 convs of both heads: their shapes depend on the number of classes, so they are
#: never taken from a file and stay freshly initialised for the new classes.
CLASS_LAYERS = ("classifier.4.", "aux_classifier.4.")
HEADS = ("classifier.", "aux_classifier.")

#: What each fine-tuning policy leaves trainable; the first is the default with --pretrained.
FINETUNE_POLICIES = {
    "head": "the classifier and aux_classifier heads",
    "head+last": "the heads and the last backbone stage "
    "(ResNet-50: layer4; MobileNetV3: the dilated 160-channel blocks and the final conv)",
    "all": "every layer",
}


class DeepLabSegmenter(DeepLabV3):
    """DeepLabV3 whose ``forward`` maps ``(B, 3, H, W)`` to logits ``(B, K, H, W)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        size = x.shape[-2:]
        features = self.backbone(x)["out"]  # (B, C, H/8 or H/16, ...)
        logits = self.classifier(features)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)

    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Main and auxiliary logits, both at input resolution (training only)."""
        size = x.shape[-2:]
        features = self.backbone(x)
        out = F.interpolate(self.classifier(features["out"]), size=size, mode="bilinear")
        if self.aux_classifier is None:
            return out, None
        aux = F.interpolate(self.aux_classifier(features["aux"]), size=size, mode="bilinear")
        return out, aux


def _family(model: nn.Module) -> str:
    return "ResNet-50" if hasattr(model.backbone, "layer4") else "MobileNetV3-Large"


def _file_backbone_prefix(model: nn.Module) -> str:
    # ImageNet classifiers name the backbone differently: resnet50 at the top level (conv1,
    # layer1, ...), mobilenet_v3_large under ``features.``; DeepLab puts both under ``backbone.``.
    return "" if hasattr(model.backbone, "layer4") else "features."


def _full_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """(file tensors to load, model tensors they must match) for full segmentation weights."""
    loaded = {k: v for k, v in state.items() if not k.startswith(CLASS_LAYERS)}
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith(CLASS_LAYERS)}
    # The aux head only shapes training: a file saved without one (aux_loss=False) leaves it
    # fresh, and a model built without one ignores the file's.
    if model.aux_classifier is None:
        loaded = {k: v for k, v in loaded.items() if not k.startswith("aux_classifier.")}
    if not any(k.startswith("aux_classifier.") for k in state):
        expected = {k: v for k, v in expected.items() if not k.startswith("aux_classifier.")}
    return loaded, expected


def load_pretrained_deeplab(model: nn.Module, path: str | Path) -> None:
    """Load a local torchvision-format file into a DeepLabV3 built by this module.

    The kind of file is told from its keys:

    * full segmentation weights (the state dict of torchvision's ``deeplabv3_*``, keys
      ``backbone.*``, ``classifier.*``, ``aux_classifier.*``, e.g. COCO/VOC weights): everything
      is kept except the class-count-dependent last convs (``classifier.4``,
      ``aux_classifier.4``), which stay freshly initialised for this model's classes;
    * backbone-only ImageNet weights (torchvision's ``resnet50`` or ``mobilenet_v3_large``
      classifier): ``conv1``/``bn1``/``layer1..4`` or ``features.<i>`` become ``backbone.*``;
      the ImageNet ``fc``/``classifier`` is dropped and both heads stay fresh.

    Keys that do not fit raise one :class:`SegdeployError` naming the file and the first missing,
    unexpected and wrong-shape keys (in the file's own names).
    """
    state = read_state_dict(path)
    family = _family(model)
    if any(k.startswith("backbone.") for k in state):
        loaded, expected = _full_weights(model, state)
        check_state_keys(path, loaded, expected, f"a DeepLabV3 {family} (segmentation weights)")
        model.load_state_dict(loaded, strict=False)
        return
    prefix = _file_backbone_prefix(model)
    expected = {
        prefix + k.removeprefix("backbone."): v
        for k, v in model.state_dict().items()
        if k.startswith("backbone.")
    }
    loaded = {k: v for k, v in state.items() if not k.startswith(("fc.", "classifier."))}
    check_state_keys(path, loaded, expected, f"a DeepLabV3 {family} backbone (ImageNet weights)")
    model.load_state_dict(
        {"backbone." + k.removeprefix(prefix): v for k, v in loaded.items()}, strict=False
    )


def last_stage_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Parameter-name prefixes of the last backbone stage (what ``head+last`` also trains).

    ResNet-50: ``layer4``. MobileNetV3-Large: from the last strided block on (its ``_is_cn``
    marker; blocks 13-15, dilated, 160 channels) through the final 1x1 conv (block 16).
    """
    if hasattr(model.backbone, "layer4"):
        return ("backbone.layer4.",)
    names = [name for name, _ in model.backbone.named_children()]
    blocks = list(model.backbone.children())
    start = max(i for i, b in enumerate(blocks) if getattr(b, "_is_cn", False))
    return tuple(f"backbone.{name}." for name in names[start:])


def apply_deeplab_finetune(model: nn.Module, policy: str) -> None:
    """Freeze every parameter outside what ``policy`` trains (see :data:`FINETUNE_POLICIES`)."""
    prefixes = {"head": HEADS, "head+last": HEADS + last_stage_prefixes(model), "all": ("",)}
    freeze_by_prefix(model, prefixes, policy)


@register_model(
    task="segmentation",
    variants={"tiny": {"layers": [1, 1, 1, 1]}, "full": {}},
    default_variant="full",
    train_size=128,
    description="torchvision DeepLabV3, dilated ResNet-50 backbone (output stride 8)",
    load_pretrained=load_pretrained_deeplab,
    finetune=apply_deeplab_finetune,
    finetune_policies=FINETUNE_POLICIES,
)
def build_deeplabv3_resnet50(
    num_classes: int, layers: Sequence[int] = (3, 4, 6, 3), aux_loss: bool = True
) -> DeepLabSegmenter:
    """DeepLabV3 on a dilated ResNet (output stride 8); ``layers`` = blocks per stage."""
    backbone = ResNet(Bottleneck, list(layers), replace_stride_with_dilation=[False, True, True])
    return_layers = {"layer4": "out", "layer3": "aux"} if aux_loss else {"layer4": "out"}
    return DeepLabSegmenter(
        IntermediateLayerGetter(backbone, return_layers=return_layers),
        DeepLabHead(2048, num_classes),
        FCNHead(1024, num_classes) if aux_loss else None,
    )


@register_model(
    task="segmentation",
    variants={"tiny": {"width_mult": 0.25}, "full": {}},
    default_variant="full",
    train_size=128,
    description="torchvision DeepLabV3, MobileNetV3-Large backbone (output stride 16)",
    load_pretrained=load_pretrained_deeplab,
    finetune=apply_deeplab_finetune,
    finetune_policies=FINETUNE_POLICIES,
)
def build_deeplabv3_mobilenet_v3_large(
    num_classes: int, width_mult: float = 1.0, aux_loss: bool = True
) -> DeepLabSegmenter:
    """DeepLabV3 on a dilated MobileNetV3-Large (output stride 16), as torchvision builds it."""
    features = mobilenet_v3_large(weights=None, dilated=True, width_mult=width_mult).features
    # The strided blocks mark the stages C1..Cn-1; C0 (stem) and Cn (last conv) are added.
    stages = [0] + [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)]
    stages.append(len(features) - 1)
    out_pos, aux_pos = stages[-1], stages[-4]
    return_layers = {str(out_pos): "out"}
    if aux_loss:
        return_layers[str(aux_pos)] = "aux"
    return DeepLabSegmenter(
        IntermediateLayerGetter(features, return_layers=return_layers),
        DeepLabHead(features[out_pos].out_channels, num_classes),
        FCNHead(features[aux_pos].out_channels, num_classes) if aux_loss else None,
    )
