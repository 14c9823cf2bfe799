"""The torch-free runtime: ONNX Runtime, numpy and pillow only.

Nothing in this package may import torch, torchvision, onnx or onnxscript; a test imports it in a
fresh interpreter and checks ``sys.modules``.

Example::

    from segdeploy.runtime import open_model

    model = open_model("exports/unet.onnx")  # the model card travels inside the file
    mask = model.predict("street.jpg")  # (H, W) uint8 class indices, the image's size
    # Images over DEFAULT_MAX_PIXELS run as overlapping windows with blended logits
    # (segdeploy.runtime.tiling); tile= and overlap= ask for it at any size.
    mask = model.predict("aerial.png", tile=512, overlap=64)
"""

from segdeploy.runtime.model import (
    ClassificationModel,
    ImageOutput,
    PreparedBatch,
    SegmentationModel,
    open_model,
)
from segdeploy.runtime.preprocess import load_image
from segdeploy.runtime.session import SessionOptions, create_session, usable_providers
from segdeploy.runtime.tiling import DEFAULT_MAX_PIXELS, DEFAULT_OVERLAP, DEFAULT_TILE

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_OVERLAP",
    "DEFAULT_TILE",
    "ClassificationModel",
    "ImageOutput",
    "PreparedBatch",
    "SegmentationModel",
    "SessionOptions",
    "create_session",
    "load_image",
    "open_model",
    "usable_providers",
]
