"""torchvision DeepLabV3 with ResNet-50 or MobileNetV3-Large backbones, never downloading weights.

The networks are composed from torchvision's own classes exactly as its
``deeplabv3_resnet50`` / ``deeplabv3_mobilenet_v3_large`` builders do (same module tree, same
state-dict keys, so torchvision checkpoints load), but:

* no argument can trigger a download (the builders fetch ImageNet backbone weights unless told
  ``weights_backbone=None``, and nothing can be downloaded here);
* the backbone depth/width is configurable, which gives small variants for fast tests;
* ``forward`` returns the main logits tensor only; the auxiliary head is evaluated by
  :meth:`DeepLabSegmenter.forward_with_aux` for the training loss and never exported.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torchvision.models import mobilenet_v3_large
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import Bottleneck, ResNet
from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3
from torchvision.models.segmentation.fcn import FCNHead

from segdeploy.models.registry import register_model


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


@register_model(
    task="segmentation",
    variants={"tiny": {"layers": [1, 1, 1, 1]}, "full": {}},
    default_variant="full",
    train_size=128,
    description="torchvision DeepLabV3, dilated ResNet-50 backbone (output stride 8)",
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
