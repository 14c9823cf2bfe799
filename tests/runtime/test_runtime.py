"""The torch-free runtime: imports, parity with PyTorch, decoding, errors, providers, threads."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segdeploy.core.errors import DataError, ProviderUnavailableError, SegdeployError
from segdeploy.core.preprocess import normalise
from segdeploy.runtime import ClassificationModel, SegmentationModel, load_image, open_model
from segdeploy.runtime.postprocess import colorize, overlay, palette, save_mask_png, softmax
from segdeploy.runtime.session import (
    SessionOptions,
    cpu_placed_nodes,
    create_session,
    session_plan,
    usable_providers,
)

FORBIDDEN = ("torch", "torchvision", "onnx", "onnxscript", "onnxsim")


@pytest.fixture(scope="module")
def unet(unet_onnx) -> SegmentationModel:
    return open_model(unet_onnx, provider="cpu")


def random_image(height: int, width: int, seed: int = 0, channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (height, width, channels), dtype=np.uint8)


def test_runtime_never_imports_the_torch_side(unet_onnx, tmp_path):
    Image.fromarray(random_image(21, 35)).save(tmp_path / "x.png")
    code = f"""
import sys
forbidden = {FORBIDDEN!r}
import segdeploy.runtime
import segdeploy.runtime.files
assert not [m for m in forbidden if m in sys.modules], sorted(sys.modules)
from segdeploy.runtime import open_model
model = open_model({str(unet_onnx)!r})
assert model.predict({str(tmp_path / "x.png")!r}).shape == (21, 35)
loaded = [m for m in sys.modules if m.split(".")[0] in forbidden]
assert not loaded, loaded
print("clean")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "clean" in result.stdout


@pytest.mark.parametrize("size", [(37, 53), (16, 16), (333, 517)])
def test_mask_matches_pytorch_argmax_at_odd_sizes(unet, tiny_checkpoints, size):
    torch = pytest.importorskip("torch")
    from segdeploy.train.checkpoint import load_checkpoint

    torch_model, card = load_checkpoint(tiny_checkpoints["unet"])
    image = random_image(*size, seed=size[0])
    padded = card.input.to_model_pixels(image, card.size_multiple)[None]  # reflect, to 16
    batch = normalise(padded, card.mean, card.std)
    assert batch.shape[2] % 16 == 0 and batch.shape[3] % 16 == 0
    with torch.no_grad():
        reference = torch_model(torch.from_numpy(batch))[0, :, : size[0], : size[1]]
    expected = reference.argmax(dim=0).numpy()

    mask = unet.predict(image)
    assert mask.shape == size and mask.dtype == np.uint8
    agreement = float(np.mean(mask == expected))
    print(f"argmax agreement at {size[0]}x{size[1]}: {agreement:.6%}")
    assert agreement >= 0.999
    logits = unet.logits(image)
    assert logits.shape == (4, *size) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, reference.numpy(), atol=1e-3, rtol=1e-3)


def test_model_input_is_reflect_padded_then_normalised(unet):
    # The input contract's 'pad' (the one implementation training validation uses too).
    image = random_image(5, 7)
    ((indices, batch),) = unet.prepare([image]).inputs
    assert indices == [0] and batch.shape == (1, 3, 16, 16) and batch.dtype == np.float32
    padded = np.pad(image, ((0, 11), (0, 9), (0, 0)), mode="reflect").astype(np.float64)
    mean, std = unet.card.mean, unet.card.std
    expected = ((padded / 255 - mean) / std).transpose(2, 0, 1)
    np.testing.assert_allclose(batch[0], expected, atol=1e-5)


def test_batch_of_mixed_sizes_equals_one_by_one(unet):
    images = [random_image(40 + i, 60 - 3 * i, seed=i) for i in range(4)]
    images.append(random_image(40, 60, seed=9)[:, :, 0])  # grayscale array in the same batch
    masks = unet.predict_batch(images)
    for image, mask in zip(images, masks, strict=True):
        assert np.array_equal(mask, unet.predict(image))
        assert mask.shape == image.shape[:2]


def _save(tmp_path: Path, name: str, image: Image.Image, **kwargs) -> Path:
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


def test_image_modes_are_converted(unet, tmp_path):
    rgb = Image.fromarray(random_image(19, 23))
    sixteen = Image.fromarray(np.full((19, 23), 65535, dtype=np.uint16))
    sources = {
        "gray": _save(tmp_path, "gray.png", rgb.convert("L")),
        "rgba": _save(tmp_path, "rgba.png", rgb.convert("RGBA")),
        "la": _save(tmp_path, "la.png", rgb.convert("LA")),
        "palette": _save(tmp_path, "palette.png", rgb.convert("P")),
        "16-bit": _save(tmp_path, "sixteen.png", sixteen),
        "cmyk": _save(tmp_path, "cmyk.jpg", rgb.convert("CMYK")),
        "1-bit": _save(tmp_path, "bits.png", rgb.convert("1")),
        "pil": rgb,
        "gray array": random_image(19, 23, channels=1)[:, :, 0],
        "1-channel array": random_image(19, 23, channels=1),
        "rgba array": random_image(19, 23, channels=4),
    }
    for name, source in sources.items():
        array = load_image(source)
        assert array.shape == (19, 23, 3) and array.dtype == np.uint8, name
        assert unet.predict(source).shape == (19, 23), name
    assert load_image(sources["16-bit"]).max() == 255  # scaled, not clipped or wrapped
    assert np.array_equal(load_image(sources["rgba"]), np.asarray(rgb))  # alpha dropped
    assert load_image(rgb, channels=1).shape == (19, 23, 1)


def _truncated_png(tmp_path: Path) -> Path:
    path = _save(tmp_path, "truncated.png", Image.fromarray(random_image(64, 64)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", "found nothing"),
        ("garbage", "cannot identify"),
        ("truncated", "truncated or corrupt"),
        ("folder", "found a folder"),
    ],
)
def test_unreadable_files_name_the_file(tmp_path, case, expected):
    path = {
        "missing": tmp_path / "missing.png",
        "garbage": tmp_path / "garbage.png",
        "truncated": None,
        "folder": tmp_path / "folder.png",
    }[case]
    if case == "garbage":
        path.write_bytes(b"\x89PNG but not really")
    elif case == "truncated":
        path = _truncated_png(tmp_path)
    elif case == "folder":
        path.mkdir()
    with pytest.raises(DataError, match=expected) as err:
        load_image(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("pixels", [500, 200])  # 640 pixels: warning range, error range
def test_decompression_bombs_are_refused(tmp_path, monkeypatch, pixels):
    path = _save(tmp_path, "bomb.png", Image.fromarray(random_image(16, 40)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pixels)
    with pytest.raises(SegdeployError, match="decompression bomb") as err:
        load_image(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    "array, expected",
    [
        (np.zeros((8, 8, 2), np.uint8), "found 2"),
        (np.zeros((8, 8, 3), np.float32), "dtype uint8"),
        (np.zeros((1, 8, 8, 3), np.uint8), r"shape \(H, W\)"),
        (np.zeros((0, 8, 3), np.uint8), "non-empty"),
    ],
)
def test_bad_arrays_are_refused(array, expected):
    with pytest.raises(SegdeployError, match=expected) as err:
        load_image(array)
    assert "image array" in str(err.value)


def test_a_zero_size_pil_image_is_refused():
    with pytest.raises(SegdeployError, match="non-empty"):
        load_image(Image.new("RGB", (0, 5)))


def test_postprocessing_helpers(tmp_path):
    colours = palette(21)
    assert colours[0] == (0, 0, 0) and len(set(colours)) == 21
    mask = np.array([[0, 1], [2, 3]], dtype=np.uint8)
    image = colorize(mask, colours[:4])
    assert image.mode == "P"
    image.save(tmp_path / "m.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "m.png")), mask)
    background = np.full((2, 2, 3), 100, np.uint8)
    blended = np.asarray(overlay(background, mask, colours, alpha=0.5))
    assert (blended[0, 0] == 100).all() and not (blended[0, 1] == 100).all()
    probabilities = softmax(np.array([[1000.0, 0.0], [1.0, 1.0]], np.float32))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)


def test_mask_png_reads_back_exactly_and_is_smaller_than_pillows_default(tmp_path):
    """A mask with the structure of a real one (a photograph's luminance in 4 bands): the PNG
    gives back every class index and the palette, and its run-length coding beats Pillow's
    default file."""
    photo = np.asarray(Image.fromarray(pytest.importorskip("skimage").data.coffee()).convert("L"))
    mask = np.digitize(photo, [64, 128, 192]).astype(np.uint8)  # (400, 600), 4 classes
    colours = palette(4)
    save_mask_png(mask, colours, tmp_path / "rle.png")
    with Image.open(tmp_path / "rle.png") as written:
        assert written.mode == "P" and np.array_equal(np.asarray(written), mask)
        assert written.getpalette()[:12] == [c for colour in colours for c in colour]
    colorize(mask, colours).save(tmp_path / "default.png")
    assert (tmp_path / "rle.png").stat().st_size < (tmp_path / "default.png").stat().st_size


def _strip_card(source: Path, target: Path) -> Path:
    onnx = pytest.importorskip("onnx")
    model = onnx.load(source)
    del model.metadata_props[:]
    onnx.save(model, target)
    return target


def test_a_file_without_a_card_needs_mean_std_and_classes(unet_onnx, unet, tmp_path):
    bare = _strip_card(unet_onnx, tmp_path / "bare.onnx")
    with pytest.raises(SegdeployError, match="model card") as err:
        open_model(bare)
    assert str(bare) in str(err.value)
    with pytest.raises(SegdeployError, match="missing: std"):
        open_model(bare, mean=unet.card.mean, class_names=unet.card.class_names)
    model = open_model(
        bare, mean=unet.card.mean, std=unet.card.std, class_names=unet.card.class_names
    )
    assert isinstance(model, SegmentationModel)
    image = random_image(29, 31)
    assert np.array_equal(model.predict(image), unet.predict(image))
    assert open_model(bare, card=unet.card).card == unet.card


def test_a_graph_without_a_rank_4_input_is_refused(tmp_path, unet):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "flat",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3, "n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 3, "n"])],
    )
    path = tmp_path / "flat.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.save(model, path)
    with pytest.raises(SegdeployError, match="rank-4 image input") as err:
        open_model(path, card=unet.card)
    assert str(path) in str(err.value)


def test_unreadable_onnx_files_are_refused(tmp_path):
    with pytest.raises(SegdeployError, match="found nothing"):
        open_model(tmp_path / "nope.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(SegdeployError, match=r"junk\.onnx"):
        open_model(tmp_path / "junk.onnx")


def test_providers_are_honest(unet_onnx):
    from segdeploy.runtime import usable_providers

    model = open_model(unet_onnx, provider="auto")
    assert model.provider == usable_providers()[-1]  # CUDA where it works, else the CPU
    with pytest.raises(SegdeployError, match="unknown provider"):
        open_model(unet_onnx, provider="tpu")
    if "cuda" in usable_providers():
        pytest.skip("CUDA works here; the rest checks the refusal on machines without it")
    with pytest.raises(ProviderUnavailableError, match="CPUExecutionProvider"):
        open_model(unet_onnx, provider="cuda")
    strict = SessionOptions(provider="cuda", disable_cpu_fallback=True)
    with pytest.raises(ProviderUnavailableError, match="cannot run on it here"):
        create_session(unet_onnx, strict)  # no GPU is not reported as "nodes on the CPU"


def test_cpu_sessions_are_what_they_were():
    plan = session_plan(SessionOptions(), "cpu")
    assert plan.providers == ["CPUExecutionProvider"]
    assert plan.config_entries == {"session.intra_op.allow_spinning": "1"}
    # Both CUDA-only switches leave a CPU session alone (ORT would reject the fallback key there).
    cuda_only = SessionOptions(use_tf32=True, disable_cpu_fallback=True, allow_spinning=False)
    assert session_plan(cuda_only, "cpu").providers == ["CPUExecutionProvider"]
    assert session_plan(cuda_only, "cpu").config_entries == {"session.intra_op.allow_spinning": "0"}


def test_cpu_session_opens_and_runs_with_the_cuda_only_switches(unet_onnx):
    session = create_session(unet_onnx, SessionOptions(use_tf32=True, disable_cpu_fallback=True))
    with pytest.raises(RuntimeError, match="does not have configuration"):
        session.get_session_options().get_session_config_entry("session.disable_cpu_ep_fallback")
    assert session.get_providers() == ["CPUExecutionProvider"]
    x = np.zeros((1, 3, 32, 32), np.float32)
    assert session.run(None, {session.get_inputs()[0].name: x})[0].shape == (1, 4, 32, 32)


def test_cuda_sessions_compute_fp32_unless_asked():
    name, provider_options = session_plan(SessionOptions(device_id=1), "cuda").providers[0]
    assert name == "CUDAExecutionProvider"
    assert provider_options == {
        "device_id": "1",
        "cudnn_conv_algo_search": "HEURISTIC",
        "use_tf32": "0",
    }
    _, opted_in = session_plan(SessionOptions(use_tf32=True), "cuda").providers[0]
    assert opted_in["use_tf32"] == "1"


def test_cuda_sessions_refuse_cpu_fallback_only_when_asked():
    lenient = session_plan(SessionOptions(), "cuda")
    assert lenient.providers[1] == "CPUExecutionProvider"
    assert "session.disable_cpu_ep_fallback" not in lenient.config_entries
    strict = session_plan(SessionOptions(disable_cpu_fallback=True), "cuda")
    # ORT refuses the key when the CPU provider is listed too, so CUDA must stand alone.
    assert [p[0] for p in strict.providers] == ["CUDAExecutionProvider"]
    assert strict.config_entries["session.disable_cpu_ep_fallback"] == "1"


def test_cpu_placed_nodes_lists_what_the_cpu_runs(unet_onnx):
    import onnxruntime as ort

    if not hasattr(ort.InferenceSession, "get_provider_graph_assignment_info"):
        pytest.skip("this onnxruntime cannot report node placement (needs 1.23+)")
    nodes = cpu_placed_nodes(unet_onnx, SessionOptions(provider="cpu"))
    assert "Conv" in nodes and len(nodes) > 10


def test_a_refused_cuda_fallback_names_the_nodes(unet_onnx, monkeypatch):
    """Where CUDA is in the build but cannot load, pretend it works: ORT then places every node
    on the CPU, which is exactly what a strict CUDA session must refuse and list."""
    import onnxruntime as ort

    from segdeploy.runtime import session as session_module

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime build has no CUDA provider to refuse")
    if "cuda" in usable_providers():
        pytest.skip("CUDA works here, so ORT would not place these nodes on the CPU")
    if not hasattr(ort.InferenceSession, "get_provider_graph_assignment_info"):
        pytest.skip("this onnxruntime cannot report node placement (needs 1.23+)")
    monkeypatch.setattr(session_module, "usable_providers", lambda: ["cpu", "cuda"])
    strict = SessionOptions(provider="cuda", disable_cpu_fallback=True)
    listing = r"node\(s\) of this model on the CPU inside the CUDA session \(Conv x\d+"
    with pytest.raises(ProviderUnavailableError, match=listing):
        create_session(unet_onnx, strict)


@pytest.mark.parametrize("allow_spinning", [True, False])
def test_spinning_is_the_callers_choice(unet_onnx, allow_spinning):
    model = open_model(unet_onnx, provider="cpu", allow_spinning=allow_spinning)
    options = model.session.get_session_options()
    entry = options.get_session_config_entry("session.intra_op.allow_spinning")
    assert entry == ("1" if allow_spinning else "0")
    assert model.predict(np.zeros((20, 30, 3), np.uint8)).shape == (20, 30)


def test_one_model_serves_many_threads(unet):
    images = [random_image(24 + 8 * (i % 3), 40 + 16 * (i % 2), seed=i) for i in range(8)]
    sequential = [(unet.predict(image), unet.logits(image)) for image in images]

    def work(index: int) -> list[tuple[np.ndarray, np.ndarray]]:
        order = [images[(index + k) % len(images)] for k in range(4)]
        return [(unet.predict(image), unet.logits(image)) for image in order]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(work, range(8)))
    for index, outputs in enumerate(results):
        for k, (mask, logits) in enumerate(outputs):
            expected_mask, expected_logits = sequential[(index + k) % len(images)]
            assert np.array_equal(mask, expected_mask)
            assert np.array_equal(logits, expected_logits)  # bit-identical


def test_classification_returns_a_card_label_and_probabilities(resnet_onnx):
    model = open_model(resnet_onnx, provider="cpu")
    assert isinstance(model, ClassificationModel)
    label, probabilities = model.predict(random_image(45, 67))
    assert label in model.card.class_names
    assert probabilities.shape == (4,) and probabilities.dtype == np.float32
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    assert label == model.card.class_names[int(np.argmax(probabilities))]
    batch = model.predict_batch([random_image(32, 32), random_image(45, 67)])
    assert batch[1][0] == label
    np.testing.assert_allclose(batch[1][1], probabilities, rtol=1e-5, atol=1e-6)
