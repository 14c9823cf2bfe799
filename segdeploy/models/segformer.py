"""SegFormer (Xie et al. 2021) from Hugging Face ``transformers``, never downloading weights.

The network is ``transformers``' own ``SegformerForSemanticSegmentation`` (same module tree and
state-dict keys), built from a ``SegformerConfig`` with random weights, with one change: the
decode head's logits come out at 1/4 of the input resolution, and :class:`SegformerSegmenter`
upsamples them *bilinearly* to the input size inside the network. Training loss, validation,
export, the parity gate, ``predict`` and ``evaluate`` therefore all see full-size logits
``(B, K, H, W)`` and take the argmax there. Taking the argmax at 1/4 resolution and enlarging the
integer mask instead would give 4x4-pixel blocks along every boundary (the trap the tutorial
warns about); Hugging Face's own loss and ``post_process_semantic_segmentation`` upsample the
same way (bilinear, ``align_corners=False``).

Input sizes must be multiples of 32: the four stages have strides 4, 8, 16, 32, and the
sequence-reduction convolutions of the attention blocks divide each stage's grid exactly only
then.

``transformers`` is an optional dependency (``pip install 'segdeploy[segformer]'``), imported
only when a SegFormer is built: the registry lists the architecture either way, as unavailable
when it is missing.

``--pretrained PATH`` takes a local Hugging Face folder (``config.json`` + ``model.safetensors``,
as ``save_pretrained`` writes it) or a PyTorch state-dict file; see
:func:`load_pretrained_segformer`.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segdeploy.core.errors import SegdeployError
from segdeploy.models.pretrained import check_state_keys, freeze_by_prefix, read_state_dict
from segdeploy.models.registry import register_model

#: What a user runs to make the architecture available.
INSTALL_HINT = "pip install 'segdeploy[segformer]'"
#: The module layout this file relies on (``segformer.stages``, ``decode_head.classifier``).
MIN_TRANSFORMERS_MAJOR = 5
#: Input height and width must be multiples of this (the encoder's total stride).
SEGFORMER_SIZE_MULTIPLE = 32

#: The decode head's final 1x1 conv: its shape depends on the number of classes, so it is never
#: taken from a file and stays freshly initialised for the new classes.
CLASS_LAYER = "decode_head.classifier."
HEAD = "decode_head."
#: What each fine-tuning policy leaves trainable; the first is the default with --pretrained.
FINETUNE_POLICIES = {
    "head": "the all-MLP decode head",
    "head+last": "the decode head and the last encoder stage (1/32 resolution)",
    "all": "every layer",
}

#: The SegformerConfig fields a variant may set (the rest keep transformers' defaults).
CONFIG_FIELDS = (
    "num_channels",
    "num_encoder_blocks",
    "depths",
    "sr_ratios",
    "hidden_sizes",
    "patch_sizes",
    "strides",
    "num_attention_heads",
    "mlp_ratios",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "classifier_dropout_prob",
    "drop_path_rate",
    "layer_norm_eps",
    "initializer_range",
    "decoder_hidden_size",
)

#: Key names of files written by transformers 4.x -- and by ``save_pretrained`` of 5.x, which
#: converts back to them on save -- mapped to the 5.x module names (transformers' own
#: conversion table for SegFormer, as data).
LEGACY_RENAMES = (
    (r"^segformer\.encoder\.patch_embeddings\.(\d+)\.", r"segformer.stages.\1.patch_embeddings."),
    (r"^segformer\.encoder\.block\.(\d+)\.", r"segformer.stages.\1.blocks."),
    (r"^segformer\.encoder\.layer_norm\.(\d+)\.", r"segformer.stages.\1.layer_norm."),
    (r"\.attention\.self\.query\.", ".attention.q_proj."),
    (r"\.attention\.self\.key\.", ".attention.k_proj."),
    (r"\.attention\.self\.value\.", ".attention.v_proj."),
    (r"\.attention\.self\.sr\.", ".attention.sequence_reduction.sequence_reduction."),
    (r"\.attention\.self\.layer_norm\.", ".attention.sequence_reduction.layer_norm."),
    (r"\.attention\.output\.dense\.", ".attention.o_proj."),
    (r"\.mlp\.dense1\.", ".mlp.fc1."),
    (r"\.mlp\.dense2\.", ".mlp.fc2."),
    (r"\.layer_norm_1\.", ".layernorm_before."),
    (r"\.layer_norm_2\.", ".layernorm_after."),
    (r"^decode_head\.linear_c\.", "decode_head.linear_projections."),
)


def transformers_available() -> bool:
    """Whether ``transformers`` is installed (looked up without importing it)."""
    return importlib.util.find_spec("transformers") is not None


def _transformers() -> Any:
    """The ``transformers`` module, or one sentence saying how to install it."""
    if not transformers_available():
        raise SegdeployError(
            f"the 'segformer' architecture needs Hugging Face transformers, which is not "
            f"installed: {INSTALL_HINT}"
        )
    import transformers

    major = int(transformers.__version__.split(".")[0])
    if major < MIN_TRANSFORMERS_MAJOR:
        raise SegdeployError(
            f"the 'segformer' architecture needs transformers {MIN_TRANSFORMERS_MAJOR} or later, "
            f"found {transformers.__version__}: pip install -U 'segdeploy[segformer]'"
        )
    return transformers


class SegformerSegmenter(nn.Module):
    """SegFormer whose ``forward`` maps ``(B, C, H, W)`` to full-size logits ``(B, K, H, W)``.

    Holds the two parts of a ``SegformerForSemanticSegmentation`` under their own names, so its
    state-dict keys are transformers' (``segformer.*``, ``decode_head.*``).
    """

    def __init__(self, hf_model: nn.Module):
        super().__init__()
        self.segformer = hf_model.segformer  # Mix Transformer encoder, 4 stages
        self.decode_head = hf_model.decode_head  # all-MLP decoder at 1/4 resolution
        self.config = hf_model.config

    def forward_low_res(self, x: torch.Tensor) -> torch.Tensor:
        """The decode head's logits, ``(B, K, H/4, W/4)``: what transformers' model returns."""
        states = self.segformer(x, output_hidden_states=True).hidden_states  # 4 x (B, C_i, ...)
        return self.decode_head(states)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Upsample the scores, never the mask: argmax after bilinear interpolation gives smooth
        # boundaries at full resolution.
        logits = self.forward_low_res(x)  # (B, K, H/4, W/4)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _config_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(kwargs) - set(CONFIG_FIELDS))
    if unknown:
        # create_model turns a TypeError into one sentence naming the arguments.
        raise TypeError(f"unknown SegFormer config fields {unknown}")
    return {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in kwargs.items()}


def _canonical_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with transformers 4.x key names renamed to 5.x ones; a file saved from the
    encoder alone (``SegformerModel``, keys without ``segformer.``) gets the prefix."""
    if not any(k.startswith(("segformer.", "decode_head.")) for k in state):
        state = {f"segformer.{k}": v for k, v in state.items()}
    renamed = {}
    for key, value in state.items():
        for pattern, replacement in LEGACY_RENAMES:
            key = re.sub(pattern, replacement, key)
        renamed[key] = value
    return renamed


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise SegdeployError(f"{path} is not a readable safetensors file ({err})") from None


def _folder_config(folder: Path) -> dict[str, Any]:
    """The ``config.json`` of a Hugging Face folder (empty without one); refuses another model."""
    path = folder / "config.json"
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text())
        model_type = config.get("model_type")
    except (OSError, ValueError, AttributeError):
        raise SegdeployError(f"{path} is not a readable JSON model config") from None
    if model_type != "segformer":
        raise SegdeployError(
            f"{folder} holds a '{model_type}' model, not a SegFormer (config.json model_type)"
        )
    return config


def _check_sizes(folder: Path, config: dict[str, Any], model: nn.Module) -> None:
    """Name the sizes when a folder's SegFormer is another variant than ``model``."""
    for field in ("hidden_sizes", "depths"):
        theirs, ours = config.get(field), list(getattr(model.config, field))
        if theirs is not None and list(theirs) != ours:
            raise SegdeployError(
                f"{folder} holds a SegFormer with {field} {list(theirs)}, but this model has "
                f"{ours}; choose the --variant of those sizes"
            )


def read_segformer_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a Hugging Face folder, a ``.safetensors`` file or a state-dict file.

    A folder must hold ``model.safetensors`` (or ``pytorch_model.bin``) and, when it has a
    ``config.json``, be a SegFormer. Nothing is ever downloaded.
    """
    path = Path(path)
    if path.is_dir():
        _folder_config(path)
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).is_file():
                return read_segformer_weights(path / name)
        raise SegdeployError(
            f"{path} is a folder without model.safetensors or pytorch_model.bin; pass a Hugging "
            f"Face model folder (as save_pretrained writes it) or a state-dict file"
        )
    if path.suffix == ".safetensors" and path.is_file():
        return _read_safetensors(path)
    return read_state_dict(path)


def load_pretrained_segformer(model: nn.Module, path: str | Path) -> None:
    """Load local SegFormer weights into ``model``, keeping its fresh classifier.

    ``path`` is a Hugging Face folder (``config.json`` + ``model.safetensors``), a
    ``.safetensors`` file or a PyTorch state-dict file, with transformers 4.x or 5.x key names.
    The kind of weights is told from their keys:

    * segmentation weights (``segformer.*`` and ``decode_head.*``, e.g. an ADE20K model): all
      but the class-count-dependent ``decode_head.classifier`` are loaded; the classifier stays
      freshly initialised for this model's classes;
    * encoder-only weights (an ImageNet MiT classifier, ``segformer.*`` + ``classifier.*``, or a
      bare ``SegformerModel``): the encoder is loaded, the ImageNet classifier dropped, the decode
      head stays fresh.

    A folder whose ``config.json`` gives other ``hidden_sizes``/``depths`` than the model's
    raises one :class:`SegdeployError` naming both; otherwise keys that do not fit (another
    variant's sizes, another model) raise one naming the path and the first missing, unexpected
    and wrong-shape keys (in transformers 5.x names).
    """
    if Path(path).is_dir():
        _check_sizes(Path(path), _folder_config(Path(path)), model)
    state = _canonical_keys(read_segformer_weights(path))
    own = model.state_dict()
    if any(k.startswith(HEAD) for k in state):
        loaded = {k: v for k, v in state.items() if not k.startswith(CLASS_LAYER)}
        expected = {k: v for k, v in own.items() if not k.startswith(CLASS_LAYER)}
        target = f"a SegFormer {_describe(model)} (segmentation weights)"
    else:
        loaded = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        expected = {k: v for k, v in own.items() if not k.startswith(HEAD)}
        target = f"a SegFormer {_describe(model)} encoder"
    check_state_keys(path, loaded, expected, target)
    model.load_state_dict(loaded, strict=False)


def _describe(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    sizes = list(getattr(config, "hidden_sizes", []))
    return f"with hidden sizes {sizes}" if sizes else "model"


def apply_segformer_finetune(model: nn.Module, policy: str) -> None:
    """Freeze every parameter outside what ``policy`` trains (see :data:`FINETUNE_POLICIES`)."""
    last = f"segformer.stages.{len(model.segformer.stages) - 1}."
    prefixes = {"head": (HEAD,), "head+last": (HEAD, last), "all": ("",)}
    freeze_by_prefix(model, prefixes, policy)


def _description() -> str:
    text = "Hugging Face SegFormer-B0 (Mix Transformer encoder, all-MLP decoder; sizes x32)"
    if transformers_available():
        return text
    return f"{text}; unavailable: transformers is not installed ({INSTALL_HINT})"


@register_model(
    task="segmentation",
    variants={
        # Tests and the parity matrix: 4 stages of one block, 118k parameters. Initialised 10x
        # wider than MiT's 0.02 so that random logits are O(1): at 0.02 this narrow net's are
        # ~1e-3, and a parity check at atol 1e-3 would compare noise.
        "tiny": {
            "hidden_sizes": [8, 16, 32, 64],
            "depths": [1, 1, 1, 1],
            "num_attention_heads": [1, 1, 2, 2],
            "decoder_hidden_size": 32,
            "initializer_range": 0.2,
        },
        # MiT-b0, SegFormer-B0 (3.7M parameters): transformers' SegformerConfig defaults.
        "full": {},
    },
    default_variant="full",
    train_size=128,
    size_multiple=SEGFORMER_SIZE_MULTIPLE,
    description=_description(),
    load_pretrained=load_pretrained_segformer,
    finetune=apply_segformer_finetune,
    finetune_policies=FINETUNE_POLICIES,
)
def build_segformer(num_classes: int, **config: Any) -> SegformerSegmenter:
    """:class:`SegformerSegmenter` with random weights; ``config`` sets ``SegformerConfig``
    fields (:data:`CONFIG_FIELDS`), the rest are MiT-b0's."""
    transformers = _transformers()
    hf_config = transformers.SegformerConfig(num_labels=num_classes, **_config_kwargs(config))
    return SegformerSegmenter(transformers.SegformerForSemanticSegmentation(hf_config))
