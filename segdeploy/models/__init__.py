"""Model registry and builders (the torch side of segdeploy).

>>> from segdeploy.models import create_model, list_models
>>> list_models()
['deeplabv3_mobilenet_v3_large', 'deeplabv3_resnet50', 'resnet18', 'unet']
"""

from segdeploy.models.deeplab import build_deeplabv3_mobilenet_v3_large, build_deeplabv3_resnet50
from segdeploy.models.registry import ArchSpec, create_model, get_spec, list_models, register_model
from segdeploy.models.resnet import apply_finetune_policy, build_resnet18, load_pretrained_backbone
from segdeploy.models.unet import build_unet

__all__ = ["ArchSpec", "create_model", "get_spec", "list_models", "register_model"]

register_model(
    ArchSpec(
        name="unet",
        task="segmentation",
        builder=build_unet,
        variants={
            "tiny": {"features": [8, 16, 32, 64]},
            "small": {"features": [16, 32, 64, 128]},
            "full": {"features": [64, 128, 256, 512]},
        },
        train_size=128,
        description="U-Net from scratch (bilinear upsampling, configurable widths)",
    )
)
register_model(
    ArchSpec(
        name="deeplabv3_resnet50",
        task="segmentation",
        builder=build_deeplabv3_resnet50,
        variants={"tiny": {"layers": [1, 1, 1, 1]}, "small": {}, "full": {}},
        train_size=128,
        description="torchvision DeepLabV3, dilated ResNet-50 backbone (output stride 8)",
    )
)
register_model(
    ArchSpec(
        name="deeplabv3_mobilenet_v3_large",
        task="segmentation",
        builder=build_deeplabv3_mobilenet_v3_large,
        variants={"tiny": {"width_mult": 0.25}, "small": {}, "full": {}},
        train_size=128,
        description="torchvision DeepLabV3, MobileNetV3-Large backbone (output stride 16)",
    )
)
register_model(
    ArchSpec(
        name="resnet18",
        task="classification",
        builder=build_resnet18,
        variants={"tiny": {}, "small": {}, "full": {}},
        train_size=224,
        description="torchvision ResNet-18 classifier, fine-tuned from a local ImageNet file",
        load_pretrained=load_pretrained_backbone,
        finetune=apply_finetune_policy,
    )
)
