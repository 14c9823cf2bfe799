"""Model registry and builders (the torch side of segdeploy).

Each builder module registers its architectures with :func:`register_model` when imported; this
package imports them all, so ``import segdeploy.models`` fills the registry.

>>> from segdeploy.models import create_model, list_models
>>> list_models()
['deeplabv3_mobilenet_v3_large', 'deeplabv3_resnet50', 'resnet18', 'segformer', 'unet']
"""

# Imported for their registrations, not for names.
from segdeploy.models import deeplab, resnet, segformer, unet  # noqa: F401
from segdeploy.models.registry import ArchSpec, create_model, get_spec, list_models, register_model

__all__ = ["ArchSpec", "create_model", "get_spec", "list_models", "register_model"]
