"""segdeploy: train vision models, export them to ONNX, and run them without torch.

Importing the top-level package is cheap and torch-free so that ``segdeploy.runtime`` can be
embedded in applications that only have onnxruntime, numpy and pillow installed.
"""

__version__ = "0.1.0"
