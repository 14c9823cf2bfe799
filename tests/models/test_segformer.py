"""SegFormer: full-size logits (never a blocky 1/4-resolution mask), local pretrained weights in
Hugging Face and state-dict form, fine-tuning policies, availability without ``transformers``,
and export with ONNX Runtime parity at sizes that are multiples of 32 but not of 64.

Weight files are written here from randomly initialised ``transformers`` models: nothing is
downloaded.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip(
    "transformers", reason="SegFormer needs the extra: pip install 'segdeploy[segformer]'"
)

from segdeploy.core.errors import SegdeployError  # noqa: E402
from segdeploy.models import create_model, get_spec  # noqa: E402
from segdeploy.models.segformer import CLASS_LAYER, INSTALL_HINT  # noqa: E402

ARCH = "segformer"
SPEC = get_spec(ARCH)
TINY = SPEC.variant_kwargs("tiny")


def _tiny(num_classes: int = 4, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model(ARCH, num_classes=num_classes, **TINY).eval()


def _hf_segmentation(num_labels: int, seed: int = 1, **config):
    """A randomly initialised transformers model, as a stand-in for a downloaded one."""
    torch.manual_seed(seed)
    cfg = transformers.SegformerConfig(num_labels=num_labels, **{**TINY, **config})
    return transformers.SegformerForSemanticSegmentation(cfg).eval()


def _blocky_fraction(mask: np.ndarray, block: int = 4) -> float:
    """Share of the ``block x block`` cells (aligned at the top-left) holding more than one label.

    A mask taken at 1/4 resolution and enlarged as integers has 0 here.
    """
    h, w = (mask.shape[0] // block) * block, (mask.shape[1] // block) * block
    cells = mask[:h, :w].reshape(h // block, block, w // block, block).transpose(0, 2, 1, 3)
    cells = cells.reshape(h // block, w // block, -1)
    return float((cells.min(axis=2) != cells.max(axis=2)).mean())


@pytest.fixture(scope="module")
def scene():
    """A real-pixel texture scene (image, mask), 64x96: a multiple of 32, not of 64."""
    pytest.importorskip("skimage")
    from real_pixels import _textures, texture_scene

    return texture_scene(3, 64, 96, _textures())


def _as_batch(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255)


def test_spec_declares_size_multiple_32_and_mit_b0():
    assert SPEC.size_multiple == 32 and SPEC.task == "segmentation"
    assert list(SPEC.variants) == ["tiny", "full"] and SPEC.default_variant == "full"
    full = create_model(ARCH, num_classes=150)
    # SegFormer-B0 for ADE20K's 150 classes has 3,752,694 parameters (the paper's 3.8M).
    assert sum(p.numel() for p in full.parameters()) == 3_752_694
    assert list(full.config.hidden_sizes) == [32, 64, 160, 256]


def test_tiny_forward_returns_full_size_logits():
    model = _tiny(num_classes=5)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        logits, low = model(x), model.forward_low_res(x)
    assert logits.shape == (2, 5, 64, 96)
    assert low.shape == (2, 5, 16, 24)  # the decode head works at 1/4 resolution


def test_logits_are_the_bilinear_upsample_of_the_decode_head(scene):
    model = _tiny()
    x = _as_batch(scene[0])
    with torch.no_grad():
        logits, low = model(x), model.forward_low_res(x)
    bilinear = F.interpolate(low, size=(64, 96), mode="bilinear", align_corners=False)
    torch.testing.assert_close(logits, bilinear, rtol=0, atol=0)
    nearest = F.interpolate(low, size=(64, 96), mode="nearest")
    assert (logits - nearest).abs().max() > 0.1  # not merely the same scores repeated


def test_the_mask_is_not_a_blocky_quarter_resolution_mask(scene):
    # The trap: argmax at 1/4 resolution, then the integer mask enlarged 4x. Such a mask is
    # constant on every 4x4 cell; the model's own mask (argmax of bilinearly upsampled scores)
    # follows boundaries inside the cells, and agrees with the blocky one away from them.
    model = _tiny()
    x = _as_batch(scene[0])
    with torch.no_grad():
        mask = model(x).argmax(1)[0].numpy()
        low_mask = model.forward_low_res(x).argmax(1, keepdim=True).float()
    blocky = F.interpolate(low_mask, scale_factor=4, mode="nearest")[0, 0].long().numpy()
    assert len(np.unique(mask)) > 1
    assert _blocky_fraction(blocky) == 0.0
    assert _blocky_fraction(mask) > 0.05
    agreement = float((mask == blocky).mean())
    assert 0.5 < agreement < 1.0


def _assert_loaded(model, source_state: dict, fresh: dict, classes: int) -> None:
    """Every tensor but the classifier is the source's; the classifier stays fresh."""
    for key, value in model.state_dict().items():
        if key.startswith(CLASS_LAYER):
            assert value.shape[0] == classes and torch.equal(value, fresh[key]), key
        else:
            assert torch.equal(value, source_state[key]), key


def test_hugging_face_folder_loads_with_a_new_classifier(tmp_path):
    source = _hf_segmentation(num_labels=7)
    source.save_pretrained(tmp_path / "hf")  # transformers writes its 4.x key names
    assert {p.name for p in (tmp_path / "hf").iterdir()} == {"config.json", "model.safetensors"}
    model = _tiny(num_classes=3)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    SPEC.load_pretrained(model, tmp_path / "hf")
    _assert_loaded(model, source.state_dict(), fresh, classes=3)


@pytest.mark.parametrize("form", ["state_dict", "legacy_state_dict", "safetensors", "wrapped"])
def test_state_dict_files_load(tmp_path, form):
    from safetensors.torch import load_file, save_file

    source = _hf_segmentation(num_labels=7)
    state = source.state_dict()  # transformers 5.x names (segformer.stages.*)
    if form == "legacy_state_dict":  # 4.x names, as published checkpoints have them
        source.save_pretrained(tmp_path / "hf")
        legacy = load_file(tmp_path / "hf" / "model.safetensors")
        assert any(k.startswith("segformer.encoder.block.") for k in legacy)
        torch.save(legacy, path := tmp_path / "legacy.pth")
    elif form == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, path := tmp_path / "w.safetensors")
    elif form == "wrapped":
        torch.save({"state_dict": state, "epoch": 3}, path := tmp_path / "lightning.ckpt")
    else:
        torch.save(state, path := tmp_path / "segformer.pth")
    model = _tiny(num_classes=3)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    SPEC.load_pretrained(model, path)
    _assert_loaded(model, state, fresh, classes=3)


def test_encoder_only_imagenet_weights_leave_the_decode_head_fresh(tmp_path):
    torch.manual_seed(2)
    cfg = transformers.SegformerConfig(num_labels=1000, **TINY)
    imagenet = transformers.SegformerForImageClassification(cfg)
    imagenet.save_pretrained(tmp_path / "mit")
    model = _tiny(num_classes=3)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    SPEC.load_pretrained(model, tmp_path / "mit")
    source = imagenet.state_dict()
    for key, value in model.state_dict().items():
        expected = fresh[key] if key.startswith("decode_head.") else source[key]
        assert torch.equal(value, expected), key


def test_weights_that_do_not_fit_are_one_sentence(tmp_path):
    model = _tiny(num_classes=3)
    # Another variant's sizes (MiT-b0 weights into the tiny model).
    b0 = transformers.SegformerForSemanticSegmentation(transformers.SegformerConfig(num_labels=5))
    b0.save_pretrained(tmp_path / "b0")
    with pytest.raises(SegdeployError) as err:
        SPEC.load_pretrained(model, tmp_path / "b0")
    assert str(err.value).endswith(
        "b0 holds a SegFormer with hidden_sizes [32, 64, 160, 256], but this model has "
        "[8, 16, 32, 64]; choose the --variant of those sizes"
    )
    # The same weights as a state-dict file: the keys tell.
    torch.save(b0.state_dict(), tmp_path / "b0.pth")
    with pytest.raises(SegdeployError, match=r"b0\.pth does not fit a SegFormer .*wrong shape: "):
        SPEC.load_pretrained(model, tmp_path / "b0.pth")
    # Another architecture's state dict: its own key names are reported, three of each.
    unet = create_model("unet", num_classes=3, features=(8, 16, 32, 64)).state_dict()
    torch.save(unet, tmp_path / "unet.pth")
    with pytest.raises(SegdeployError) as err:
        SPEC.load_pretrained(model, tmp_path / "unet.pth")
    message = str(err.value)
    assert "unet.pth does not fit a SegFormer with hidden sizes [8, 16, 32, 64] encoder" in message
    assert "missing: segformer.stages.0." in message and "unexpected: segformer.down1." in message
    assert "\n" not in message and message.count(" ...") == 2


def test_bad_paths_are_one_sentence(tmp_path):
    model = _tiny()
    (tmp_path / "empty").mkdir()
    with pytest.raises(SegdeployError, match=r"empty is a folder without model\.safetensors"):
        SPEC.load_pretrained(model, tmp_path / "empty")
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(SegdeployError, match=r"bert holds a 'bert' model, not a SegFormer"):
        SPEC.load_pretrained(model, other)
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(SegdeployError, match=r"bad\.safetensors is not a readable safetensors"):
        SPEC.load_pretrained(model, tmp_path / "bad.safetensors")
    with pytest.raises(SegdeployError, match=r"nowhere\.pth does not exist"):
        SPEC.load_pretrained(model, tmp_path / "nowhere.pth")


def test_finetune_policies_freeze_what_they_say():
    model = _tiny()

    def trainable() -> set[str]:
        return {".".join(n.split(".")[:3]) for n, p in model.named_parameters() if p.requires_grad}

    SPEC.finetune(model, "head")
    assert {t.split(".")[0] for t in trainable()} == {"decode_head"}
    SPEC.finetune(model, "head+last")
    encoder = {t for t in trainable() if t.startswith("segformer.")}
    assert encoder == {"segformer.stages.3"}
    SPEC.finetune(model, "all")
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(SegdeployError, match="unknown fine-tuning policy"):
        SPEC.finetune(model, "encoder")


def test_unknown_config_fields_are_one_sentence():
    with pytest.raises(SegdeployError, match=r"cannot build 'segformer' .*hidden_size"):
        create_model(ARCH, num_classes=3, hidden_size=[1, 2])


def test_registry_imports_and_lists_segformer_without_transformers():
    # transformers = None in sys.modules makes it impossible to import, as if not installed.
    code = textwrap.dedent(
        """
        import sys
        sys.modules["transformers"] = None
        from segdeploy.core.errors import SegdeployError
        from segdeploy.models import create_model, get_spec, list_models
        assert "segformer" in list_models()
        print(get_spec("segformer").description)
        try:
            create_model("segformer", num_classes=3)
        except SegdeployError as err:
            print(err)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    description, error = result.stdout.strip().splitlines()
    assert description.endswith(f"unavailable: transformers is not installed ({INSTALL_HINT})")
    assert error == (
        "the 'segformer' architecture needs Hugging Face transformers, which is not installed: "
        "pip install 'segdeploy[segformer]'"
    )


# Export: the registry-driven parity suite (tests/export/test_parity_suite.py) exports the tiny
# variant in every run; these check the SegFormer specifics through the public API.

#: Multiples of 32 that are not multiples of 64, batch 1 and > 1, square and not.
PARITY_SHAPES = [(1, 32, 96), (2, 96, 160), (1, 160, 32)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from segdeploy.core.card import ModelCard
    from segdeploy.export import export_checkpoint
    from segdeploy.train.checkpoint import save_checkpoint

    folder = tmp_path_factory.mktemp("segformer")
    card = ModelCard(
        arch=ARCH,
        task="segmentation",
        class_names=("brick", "grass", "gravel", "coffee"),
        model_kwargs=TINY,
        size_multiple=SPEC.size_multiple,
    )
    checkpoint = save_checkpoint(_tiny(), card, folder / "segformer.pt")
    return export_checkpoint(
        checkpoint, folder / "segformer.onnx", shapes=PARITY_SHAPES, providers=["cpu"]
    )


@pytest.mark.slow  # the dynamo export of even the tiny SegFormer takes 15-30 s on 2 cores
def test_export_declares_multiples_of_32_and_passes_parity(exported):
    import onnx

    graph = onnx.load(exported.onnx_path)
    for value in (graph.graph.input[0], graph.graph.output[0]):
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        assert dims[2:] == ["32*h", "32*w"], value.name
    report = exported.report
    assert report.passed, report.failures()
    here = [c for c in report.cases if c.provider == report.cases[0].provider]
    assert [c.input_shape[0:1] + c.input_shape[2:] for c in here] == PARITY_SHAPES
    assert len(report.cases) % len(PARITY_SHAPES) == 0  # the same shapes on each runtime checked
    for case in report.cases:
        assert case.max_abs_error < report.tolerance.atol
        assert case.argmax_agreement >= 0.999


@pytest.mark.slow
def test_runtime_predicts_a_smooth_mask_at_an_odd_size(exported):
    from segdeploy.runtime import open_model

    pytest.importorskip("skimage")
    from real_pixels import _textures, texture_scene

    image, _ = texture_scene(0, 97, 131, _textures())
    mask = open_model(exported.onnx_path, provider="cpu").predict(image)
    assert mask.shape == (97, 131)
    # The runtime pads at the bottom and right, so the 4x4 cells of the 1/4-resolution grid start
    # at the top-left corner: a mask enlarged from that grid would be constant on each of them.
    assert _blocky_fraction(mask) > 0.05
