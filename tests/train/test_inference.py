"""``TorchPredictor`` serves a checkpoint the way the runtime serves its export."""

from __future__ import annotations

import numpy as np
import pytest

from segdeploy.runtime import open_model
from segdeploy.train.inference import TorchPredictor


@pytest.mark.parametrize("size", [(37, 53), (16, 16), (97, 131)])
def test_checkpoint_and_export_give_the_same_mask(tiny_checkpoints, unet_onnx, size):
    image = np.random.default_rng(size[0]).integers(0, 256, (*size, 3), dtype=np.uint8)
    torch_side = TorchPredictor.from_checkpoint(tiny_checkpoints["unet"])
    onnx_side = open_model(unet_onnx, provider="cpu")
    np.testing.assert_allclose(torch_side.logits(image), onnx_side.logits(image), atol=1e-4)
    assert torch_side.predict(image).shape == size


def test_classifier_gives_a_label_and_probabilities(tiny_checkpoints):
    predictor = TorchPredictor.from_checkpoint(tiny_checkpoints["resnet18"])
    label, probabilities = predictor.predict(np.zeros((17, 23, 3), np.uint8))
    assert label in predictor.card.class_names
    assert probabilities.shape == (4,) and abs(float(probabilities.sum()) - 1) < 1e-5
