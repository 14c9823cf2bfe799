"""The torch-free contracts every stage shares.

errors (typed, under one base), the model card, artifact naming and precisions, image decoding,
normalisation and the size rule, metrics, layered parity comparison and atomic writes. Nothing
here imports torch, onnx or any other segdeploy package (a test walks the imports).
"""
