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


def test_training_validation_scores_class_255_of_a_300_class_classifier():
    # score_items is training validation's scorer: class 255 must count like any other class.
    from segdeploy.core.card import ModelCard
    from segdeploy.data.samples import LabelledImage
    from segdeploy.train.loop import score_items

    card = ModelCard("resnet18", "classification", tuple(f"c{i}" for i in range(300)))

    class Answers:  # predicts the class stored in the image's first pixel
        def __init__(self):
            self.card = card

        def predict(self, pixels):
            probabilities = np.zeros(300, np.float32)
            probabilities[int(pixels[0, 0, 0]) + int(pixels[0, 0, 1])] = 1.0
            return card.class_names[int(np.argmax(probabilities))], probabilities

    def item(predicted, label):
        pixels = np.zeros((4, 4, 3), np.uint8)
        pixels[0, 0, :2] = (min(predicted, 255), predicted - min(predicted, 255))
        return LabelledImage(f"x{label}", pixels, label)

    items = [item(255, 255), item(255, 255), item(3, 255), item(299, 299), item(1, 2)]
    score = score_items(Answers(), items)
    assert score.images == 5 and score.metric == pytest.approx(3 / 5)  # 1/2 with 255 dropped
    assert score.per_class[255] == pytest.approx(2 / 3)


def test_a_checkpoint_tiles_as_its_export_does(tiny_checkpoints, unet_onnx):
    # One rule and one blend for both engines: an image the runtime tiles is tiled alike here.
    from segdeploy.runtime import tiling

    image = np.random.default_rng(7).integers(0, 256, (75, 101, 3), dtype=np.uint8)
    torch_side = TorchPredictor.from_checkpoint(tiny_checkpoints["unet"])
    onnx_side = open_model(unet_onnx, provider="cpu")
    options = {"tile": 32, "overlap": 16}
    grid = tiling.card_grid(torch_side.card, 75, 101, **options)
    assert grid == onnx_side.tile_grid(75, 101, **options) and grid.windows == 24
    tiled = torch_side.logits(image, **options)
    np.testing.assert_allclose(tiled, onnx_side.logits(image, **options), atol=1e-4)
    assert not np.allclose(tiled, torch_side.logits(image), atol=1e-4)  # not the whole image
    window = lambda w: torch_side.logits(w, max_pixels=None)  # noqa: E731
    np.testing.assert_array_equal(
        torch_side.predict(image, **options), tiling.tiled_mask(image, window, 4, grid)
    )
    # over DEFAULT_MAX_PIXELS it tiles unasked, as predict does
    assert tiling.card_grid(torch_side.card, 2049, 2071) is not None
    assert tiling.card_grid(torch_side.card, 2048, 2048) is None
