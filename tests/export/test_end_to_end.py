"""The end-to-end graph (``x.e2e.onnx``): uint8 pixels in, the runtime's mask (or label) out.

Every comparison runs the written file in a plain ONNX Runtime session on uint8 input, as an app
in another language would, against ``segdeploy.runtime.open_model(export).predict``. Besides the
tiny U-Net, two hand-made graphs make the checks sharp: a "flip" model whose scores are the
normalised image reversed in height and width (so the cropped output shows the padded strip and
the resized pixels exactly), and a small classifier.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from PIL import Image  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from segdeploy.cli import app  # noqa: E402
from segdeploy.core import artifacts  # noqa: E402
from segdeploy.core.card import ONNX_METADATA_KEY, ModelCard  # noqa: E402
from segdeploy.core.errors import ParityError, SegdeployError  # noqa: E402
from segdeploy.core.fileio import file_sha256  # noqa: E402
from segdeploy.export import end_to_end  # noqa: E402
from segdeploy.export.end_to_end import (  # noqa: E402
    build_end_to_end,
    check_end_to_end,
    export_end_to_end,
)
from segdeploy.export.onnx_file import attach_metadata  # noqa: E402
from segdeploy.runtime import open_model  # noqa: E402

#: Odd, non-square, thin and tiny (smaller than the padding) sizes.
ODD_SIZES = ((61, 93), (97, 131), (17, 200), (7, 5))


@pytest.fixture(scope="module")
def real_images():
    """Texture scenes made of real photographs (scikit-image) at :data:`ODD_SIZES`."""
    pytest.importorskip("skimage")
    from real_pixels import _textures, texture_scene

    textures = _textures()
    return [texture_scene(i, h, w, textures, seed=3)[0] for i, (h, w) in enumerate(ODD_SIZES)]


@pytest.fixture(scope="module")
def varied_unet(unet_onnx, tmp_path_factory):
    """The untrained tiny U-Net with its last bias zeroed: its masks then follow the pixels
    instead of the bias (one class everywhere would make mask comparisons vacuous)."""
    model = onnx.load(unet_onnx)
    last = next(n for n in model.graph.node if n.output[0] == model.graph.output[0].name)
    bias = next(i for i in model.graph.initializer if i.name == last.input[2])
    bias.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(bias)), bias.name))
    path = tmp_path_factory.mktemp("e2e") / "unet.onnx"
    onnx.save(model, path)
    return path


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _save(graph, card: ModelCard, path):
    """A segdeploy-like export: ``graph`` with ``card`` in its metadata."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    attach_metadata(model, {ONNX_METADATA_KEY: card.to_json()})
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def flip_model(path, contract: dict, channels: int = 3):
    """Scores = the normalised image reversed in H and W: the mask is the brightest normalised
    channel of the *padded* (and resized) image, mirrored, so any pixel difference shows."""
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["b", channels, "h", "w"])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", channels, "h", "w"])
    ints = lambda name, v: numpy_helper.from_array(np.array(v, np.int64), name)  # noqa: E731
    node = helper.make_node("Slice", ["image", "s", "e", "a", "st"], ["logits"])
    low = np.iinfo(np.int64).min
    graph = helper.make_graph(
        [node],
        "flip",
        [image],
        [logits],
        [ints("s", [-1, -1]), ints("e", [low, low]), ints("a", [2, 3]), ints("st", [-1, -1])],
    )
    card = ModelCard(
        arch="flip",
        task="segmentation",
        class_names=tuple("rgb"[:channels]) if channels > 1 else ("a", "b"),
        mean=(0.2, 0.5, 0.7)[:channels],
        std=(0.3, 0.2, 0.25)[:channels],
        input=contract,
    )
    return _save(graph, card, path)


def classifier(path, contract: dict, channels: int = 1, classes: int = 3):
    """Conv -> ReLU -> global average -> linear: a small seeded classifier."""
    rng = np.random.default_rng(0)
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["b", channels, "h", "w"])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", classes])
    weights = {
        "w1": rng.normal(0, 0.5, (8, channels, 3, 3)),
        "b1": rng.normal(0, 0.1, 8),
        "w2": rng.normal(0, 1.0, (classes, 8)),
        "b2": np.zeros(classes),
    }
    nodes = [
        helper.make_node("Conv", ["image", "w1", "b1"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "w2", "b2"], ["logits"], transB=1),
    ]
    initializers = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()]
    graph = helper.make_graph(nodes, "classifier", [image], [logits], initializers)
    card = ModelCard(
        arch="tinycls",
        task="classification",
        class_names=tuple(f"c{i}" for i in range(classes)),
        in_channels=channels,
        mean=(0.45,) * channels,
        std=(0.25,) * channels,
        input=contract,
    )
    return _save(graph, card, path)


def _random_images(sizes, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, channels), dtype=np.uint8) for h, w in sizes]


def assert_masks_equal_predict(e2e_path, onnx_path, images):
    """The file's masks, run on uint8 pixels, against the runtime's predict: pixel agreement."""
    session, reference = _session(e2e_path), open_model(onnx_path, provider="cpu")
    agreeing = total = 0
    for image in images:
        (mask,) = session.run(["mask"], {"image": image})
        expected = reference.predict(image)
        assert mask.dtype == np.uint8 and mask.shape == image.shape[:2]
        agreeing += int(np.sum(mask == expected))
        total += expected.size
    return agreeing / total


# ------------------------------------------------------------------------------------------------
# The U-Net on real pixels
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unet_e2e(varied_unet, real_images):
    return export_end_to_end(varied_unet, images=real_images)


def test_unet_masks_equal_predict_on_real_pixels_at_odd_sizes(unet_e2e, varied_unet, real_images):
    assert unet_e2e.path == varied_unet.with_name("unet.e2e.onnx")
    reference = open_model(varied_unet, provider="cpu")
    masks = [reference.predict(image) for image in real_images[:3]]
    # Not vacuous: the reference masks hold several classes, each on a real share of pixels.
    counts = np.bincount(np.concatenate([m.ravel() for m in masks]), minlength=4)
    assert np.sum(counts > 0.005 * counts.sum()) >= 2, counts
    assert assert_masks_equal_predict(unet_e2e.path, varied_unet, real_images) >= 0.9999
    assert unet_e2e.report.passed and unet_e2e.report.agreement >= 0.9999


def test_the_file_takes_uint8_pixels_and_carries_the_card(unet_e2e, varied_unet):
    session = _session(unet_e2e.path)
    (image,) = session.get_inputs()
    assert (image.name, image.type, image.shape) == (
        "image",
        "tensor(uint8)",
        ["height", "width", 3],
    )
    assert [(o.name, o.type, o.shape) for o in session.get_outputs()] == [
        ("mask", "tensor(uint8)", ["height", "width"])
    ]
    props = session.get_modelmeta().custom_metadata_map
    exported = open_model(varied_unet, provider="cpu").card
    assert ModelCard.from_json(props[ONNX_METADATA_KEY]) == exported
    record = json.loads(props[artifacts.END_TO_END_KEY])
    assert record["gate"]["passed"] and record["gate"]["agreement"] >= 0.9999
    assert set(record["outputs"]) == {"mask"}
    assert props[artifacts.PARENT_SHA256_KEY] == file_sha256(varied_unet)


def test_a_batch_graph_gives_each_image_its_own_mask(varied_unet, real_images, tmp_path):
    """--batch-input: (N, H, W, C) in, (N, H, W) out; each row is that image's predict."""
    result = export_end_to_end(varied_unet, tmp_path / "b.e2e.onnx", real_images, batch=True)
    session = _session(result.path)
    assert session.get_inputs()[0].shape == ["batch", "height", "width", 3]
    assert session.get_outputs()[0].shape == ["batch", "height", "width"]
    assert any(i.name.startswith("batch of 2") for i in result.report.images)
    height, width = 17, 93  # a crop every image but the tiny one covers
    batch = np.stack([image[:height, :width] for image in real_images[:3]])
    (masks,) = session.run(["mask"], {"image": batch})
    assert masks.shape == (3, height, width) and masks.dtype == np.uint8
    reference = open_model(varied_unet, provider="cpu")
    for image, mask in zip(batch, masks, strict=True):
        assert np.mean(mask == reference.predict(image)) >= 0.9999
    assert not np.array_equal(masks[0], masks[1])  # the rows are the images, not one repeated


def test_default_gate_images_pass(varied_unet):
    report = check_end_to_end(
        build_end_to_end(onnx.load(varied_unet), _card(varied_unet)), varied_unet
    )
    sizes = {(i.height, i.width) for i in report.images}
    assert sizes == set(end_to_end.GATE_SIZES) and report.passed


def _card(path) -> ModelCard:
    return open_model(path, provider="cpu").card


def test_dropped_normalisation_is_refused_and_nothing_is_written(
    varied_unet, real_images, monkeypatch, tmp_path
):
    real = end_to_end.read_card
    # The graph is built from a card without normalisation (pixels reach the model as 0..255).
    monkeypatch.setattr(
        end_to_end,
        "read_card",
        lambda model, source: real(model, source).replace(mean=(0, 0, 0), std=(1 / 255,) * 3),
    )
    out = tmp_path / "refused.e2e.onnx"
    with pytest.raises(ParityError, match="disagrees with the runtime's predict") as caught:
        export_end_to_end(varied_unet, out, images=real_images)
    assert not caught.value.report.passed and caught.value.report.agreement < 0.99
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("padding", ["edge", "constant"])
def test_another_padding_mode_is_refused(varied_unet, padding):
    """Even where masks happen to agree, the scores behind them show a wrong padding."""
    card = _card(varied_unet).replace(input={"resize": "pad", "size": None, "padding": padding})
    report = check_end_to_end(build_end_to_end(onnx.load(varied_unet), card), varied_unet)
    assert not report.passed and report.score_error > 1e-3


# ------------------------------------------------------------------------------------------------
# Padding and resizing, exactly, on the flip model
# ------------------------------------------------------------------------------------------------

TINY_SIZES = ((1, 1), (1, 17), (2, 3), (5, 9), (15, 16), (16, 16), (17, 31), (33, 2), (40, 47))


@pytest.mark.parametrize("padding", ["reflect", "edge", "constant"])
def test_padding_is_numpys_at_every_size(tmp_path, padding):
    """numpy reflects again and again when the pad exceeds the image (1x1, 2x3, 5x9 padded to
    16); ONNX Pad's reflect would refuse those. The graph gives numpy's pixels at every size."""
    onnx_path = flip_model(tmp_path / "flip.onnx", {"resize": "pad", "padding": padding})
    images = _random_images(TINY_SIZES)
    result = export_end_to_end(onnx_path, images=images)
    assert result.report.agreement == 1.0 and result.report.score_error == 0.0
    assert assert_masks_equal_predict(result.path, onnx_path, images) == 1.0


@pytest.mark.parametrize(
    "contract",
    [{"resize": "fixed", "size": [32, 48]}, {"resize": "shorter_side", "size": [24]}],
    ids=["fixed", "shorter_side"],
)
def test_resize_policies_match_pillow_exactly(tmp_path, real_images, contract):
    """Shrinking (Pillow's widened filter) and enlarging, pixels and then scores resized back."""
    onnx_path = flip_model(tmp_path / "flip.onnx", contract)
    images = [*real_images, *_random_images(((3, 4), (200, 90)), seed=1)]
    result = export_end_to_end(onnx_path, images=images)
    assert result.report.score_error < 1e-6
    assert assert_masks_equal_predict(result.path, onnx_path, images) == 1.0


# ------------------------------------------------------------------------------------------------
# Classification
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "contract",
    [{"resize": "fixed", "size": [32, 32]}, {"resize": "pad"}],
    ids=["fixed", "pad"],
)
def test_classifier_label_and_probabilities_equal_predict(tmp_path, real_images, contract):
    onnx_path = classifier(tmp_path / "cls.onnx", contract)  # one channel: luminance
    images = [*real_images, *_random_images(((300, 200),), seed=2)]
    result = export_end_to_end(onnx_path, images=images)
    session, reference = _session(result.path), open_model(onnx_path, provider="cpu")
    assert session.get_inputs()[0].shape == ["height", "width", 1]
    labels = set()
    for image in images:
        grey = np.asarray(Image.fromarray(image).convert("L"))[:, :, None]
        probabilities, label = session.run(["probabilities", "label"], {"image": grey})
        name, expected = reference.predict(image)
        assert label.shape == () and reference.card.class_names[int(label)] == name
        np.testing.assert_allclose(probabilities, expected, atol=1e-6)
        labels.add(name)
    assert len(labels) >= 2  # the labels depend on the image
    # The batch graph: (N, K) probabilities and (N,) labels, each row the image's own.
    batched = export_end_to_end(onnx_path, tmp_path / "b.e2e.onnx", images, batch=True)
    batch = np.stack([np.asarray(Image.fromarray(i[:17, :93]).convert("L")) for i in images[:3]])
    probabilities, label = _session(batched.path).run(
        ["probabilities", "label"], {"image": batch[..., None]}
    )
    assert probabilities.shape == (3, reference.card.num_classes) and label.shape == (3,)
    for row, image in enumerate(batch):
        name, expected = reference.predict(image[..., None])
        assert reference.card.class_names[int(label[row])] == name
        np.testing.assert_allclose(probabilities[row], expected, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# What is refused, names, the command line
# ------------------------------------------------------------------------------------------------


def test_an_end_to_end_graph_is_not_wrapped_again(unet_e2e):
    with pytest.raises(SegdeployError, match="already an end-to-end graph"):
        export_end_to_end(unet_e2e.path)


def test_existing_output_needs_force(unet_e2e, varied_unet, real_images):
    before = unet_e2e.path.read_bytes()
    with pytest.raises(SegdeployError, match="already exists; pass --force"):
        export_end_to_end(varied_unet, images=real_images)
    assert unet_e2e.path.read_bytes() == before


def test_a_file_without_a_card_is_refused(tmp_path, varied_unet):
    bare = onnx.load(varied_unet)
    del bare.metadata_props[:]
    onnx.save(bare, tmp_path / "bare.onnx")
    with pytest.raises(SegdeployError, match="no segdeploy model card"):
        export_end_to_end(tmp_path / "bare.onnx")


def test_an_old_opset_is_refused(tmp_path):
    path = flip_model(tmp_path / "old.onnx", {"resize": "pad"})
    model = onnx.load(path)
    model.opset_import[0].version = 12
    onnx.save(model, path)
    with pytest.raises(SegdeployError, match="needs ONNX opset 13 or later, found 12"):
        export_end_to_end(path)
    assert not path.with_name("old.e2e.onnx").exists()


def test_names():
    assert artifacts.end_to_end_path("exports/x.onnx").as_posix() == "exports/x.e2e.onnx"
    assert artifacts.is_variant("x.e2e.onnx") and not artifacts.is_variant("x.onnx")


def test_export_command_writes_the_end_to_end_graph_beside_the_model(tiny_checkpoints, tmp_path):
    checkpoint = shutil.copy(tiny_checkpoints["unet"], tmp_path / "unet.pt")
    out = tmp_path / "unet.onnx"
    result = CliRunner().invoke(
        app, ["export", str(checkpoint), "--out", str(out), "--shapes", "16x16", "--end-to-end"]
    )
    assert result.exit_code == 0, result.output
    assert "end-to-end graph" in result.output and (tmp_path / "unet.e2e.onnx").is_file()
    lone = CliRunner().invoke(app, ["export", str(checkpoint), "--batch-input", "--force"])
    assert lone.exit_code != 0 and "add --end-to-end" in lone.output


def test_an_end_to_end_graph_onto_its_export_is_refused_even_with_force(unet_onnx, tmp_path):
    export = shutil.copy(unet_onnx, tmp_path / "unet.onnx")
    with pytest.raises(SegdeployError, match="never replaces an input"):
        export_end_to_end(export, export, force=True)
    assert export.read_bytes() == unet_onnx.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unet.onnx"]
