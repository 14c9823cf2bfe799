"""The torch-free runtime: ONNX Runtime, numpy and pillow only.

Nothing in this package may import torch, torchvision, onnx or onnxscript; a test imports it in a
fresh interpreter and checks ``sys.modules``.
"""

from segdeploy.runtime.session import SessionOptions, create_session, usable_providers

__all__ = ["SessionOptions", "create_session", "usable_providers"]
