"""Registry and builders: every registered arch builds and maps images to the right shape."""

from __future__ import annotations

import pytest
import torch

from segdeploy.core.errors import SegdeployError
from segdeploy.models import ArchSpec, create_model, get_spec, list_models, register_model
from segdeploy.models.resnet import apply_finetune_policy, load_pretrained_backbone
from segdeploy.train import freeze_frozen_batchnorm


@pytest.mark.parametrize("arch", list_models())
def test_smallest_variant_output_shape(arch):
    spec = get_spec(arch)
    model = create_model(arch, num_classes=5, **spec.variant_kwargs(spec.smallest_variant)).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96))
    expected = (2, 5, 64, 96) if spec.task == "segmentation" else (2, 5)
    assert tuple(out.shape) == expected


def test_every_arch_declares_distinct_variants_and_a_default():
    for arch in list_models():
        spec = get_spec(arch)
        assert spec.default_variant in spec.variants, arch
        assert spec.smallest_variant == next(iter(spec.variants)), arch
        # What the strides need: 16 for the CNNs, 32 for SegFormer's stride-32 last stage.
        assert spec.size_multiple == (32 if arch == "segformer" else 16), arch
        # One size is one variant: no two names for the same configuration.
        configs = [sorted(kwargs.items()) for kwargs in spec.variants.values()]
        assert all(configs.count(c) == 1 for c in configs), arch


def test_training_defaults_build_what_small_built_before():
    assert get_spec("unet").resolve_variant(None) == "small"
    for arch in ("deeplabv3_resnet50", "deeplabv3_mobilenet_v3_large", "resnet18"):
        spec = get_spec(arch)
        assert spec.variant_kwargs(spec.resolve_variant(None)) == {}, arch


def test_unet_runs_in_eager_mode_at_sizes_that_are_not_multiples_of_16():
    model = create_model("unet", num_classes=4, features=(8, 16, 32, 64)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 37, 53)).shape == (1, 4, 37, 53)


def test_unet_transposed_conv_upsampling_also_fits():
    model = create_model("unet", num_classes=3, features=(8, 16, 32, 64), bilinear=False).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 48, 80)).shape == (1, 3, 48, 80)


def test_full_unet_channel_arithmetic_is_fixed():
    # The tutorial's U-Net crashed here: up1 expected 2048 channels and received 1536.
    model = create_model("unet", num_classes=4, **get_spec("unet").variant_kwargs("full")).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 4, 32, 32)


@pytest.mark.parametrize("arch", ["deeplabv3_resnet50", "deeplabv3_mobilenet_v3_large"])
def test_deeplab_matches_torchvision_state_dict_and_never_downloads(arch):
    import torchvision.models.segmentation as tvseg

    ours = create_model(arch, num_classes=4)
    theirs = getattr(tvseg, arch)(weights=None, weights_backbone=None, num_classes=4, aux_loss=True)
    ours_shapes = {k: v.shape for k, v in ours.state_dict().items()}
    assert ours_shapes == {k: v.shape for k, v in theirs.state_dict().items()}


def test_deeplab_aux_head_is_for_training_only():
    model = create_model("deeplabv3_mobilenet_v3_large", num_classes=4, width_mult=0.25).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out, aux = model.forward_with_aux(x)
        assert torch.equal(model(x), out)
    assert aux.shape == out.shape == (1, 4, 64, 64)


def test_registry_rejects_duplicates_and_unknown_names():
    with pytest.raises(ValueError, match="already registered"):
        register_model(ArchSpec(name="unet", task="segmentation", builder=lambda **_: None))
    with pytest.raises(ValueError, match="already registered"):
        # The decorator names the spec after the builder: build_unet -> "unet".
        register_model(task="segmentation")(get_spec("unet").builder)
    with pytest.raises(SegdeployError, match="unknown architecture 'nope'"):
        create_model("nope", num_classes=2)
    with pytest.raises(SegdeployError, match="no variant"):
        get_spec("unet").variant_kwargs("huge")


def test_pretrained_resnet18_loads_from_a_local_file(tmp_path):
    from torchvision.models import resnet18

    torch.manual_seed(1)
    imagenet = resnet18(weights=None)  # stands in for a downloaded ImageNet file
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(imagenet.state_dict(), path)
    model = create_model("resnet18", num_classes=3)
    load_pretrained_backbone(model, path)
    assert torch.equal(model.conv1.weight, imagenet.conv1.weight)
    assert model.fc.out_features == 3


def test_pretrained_file_errors_name_the_file(tmp_path):
    model = create_model("resnet18", num_classes=3)
    with pytest.raises(SegdeployError, match=r"missing\.pth does not exist"):
        load_pretrained_backbone(model, tmp_path / "missing.pth")
    wrong = tmp_path / "wrong.pth"
    torch.save(create_model("unet", num_classes=3, features=(8, 16, 32, 64)).state_dict(), wrong)
    with pytest.raises(SegdeployError, match=r"wrong\.pth does not fit a ResNet-18"):
        load_pretrained_backbone(model, wrong)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00" * 100)
    with pytest.raises(SegdeployError, match=r"garbage\.pth is not a loadable"):
        load_pretrained_backbone(model, garbage)


def _one_training_step(model):
    model.train()
    freeze_frozen_batchnorm(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=0.1)
    loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 64, 64)), torch.arange(4) % 3)
    loss.backward()
    optimizer.step()


def test_fc_policy_leaves_every_frozen_tensor_bit_identical():
    model = create_model("resnet18", num_classes=3)
    apply_finetune_policy(model, "fc")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _one_training_step(model)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # BatchNorm running statistics are buffers: frozen layers keep them too (BN stays in eval).
    assert changed == {"fc.weight", "fc.bias"}


def test_layer4_policy_trains_the_last_block_and_fc_only():
    model = create_model("resnet18", num_classes=3)
    apply_finetune_policy(model, "layer4")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _one_training_step(model)
    changed = {
        k.split(".")[0] for k, v in model.state_dict().items() if not torch.equal(before[k], v)
    }
    assert changed == {"layer4", "fc"}
    with pytest.raises(SegdeployError, match="unknown fine-tuning policy"):
        apply_finetune_policy(model, "layer9")
