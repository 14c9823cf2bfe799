"""Models opened from bytes, and signed artifacts (``sign``, ``verify --signature``,
``open_model(require_signature=)``) on the tiny U-Net export."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from real_pixels import TEXTURE_CLASSES, _textures, texture_scene
from typer.testing import CliRunner

from segdeploy.cli.app import app
from segdeploy.core.errors import SegdeployError
from segdeploy.runtime import open_model
from segdeploy.runtime.model import IN_MEMORY

runner = CliRunner()


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A 97x131 (odd, not a multiple of 16) scene of real textures."""
    return texture_scene(0, 97, 131, _textures(TEXTURE_CLASSES))[0]


def test_open_model_from_bytes_predicts_what_the_file_does(unet_onnx, photo):
    from_file = open_model(unet_onnx, provider="cpu")
    from_bytes = open_model(Path(unet_onnx).read_bytes(), provider="cpu")
    assert from_bytes.path == IN_MEMORY
    assert from_bytes.card == from_file.card
    mask = from_bytes.predict(photo)
    assert mask.shape == (97, 131)
    np.testing.assert_array_equal(mask, from_file.predict(photo))
    np.testing.assert_allclose(from_bytes.logits(photo), from_file.logits(photo), atol=1e-6)


def test_decrypt_then_open_as_the_readme_shows(unet_onnx, tmp_path, photo):
    key = 0x5A  # the README's stand-in for a real cipher
    encrypted = tmp_path / "unet.onnx.enc"
    encrypted.write_bytes(bytes(b ^ key for b in Path(unet_onnx).read_bytes()))
    model = open_model(bytes(b ^ key for b in encrypted.read_bytes()), provider="cpu")
    np.testing.assert_array_equal(model.predict(photo), open_model(unet_onnx).predict(photo))


def test_garbage_bytes_are_refused_in_one_sentence():
    with pytest.raises(SegdeployError) as caught:
        open_model(b"not a model", provider="cpu")
    assert "\n" not in str(caught.value)


# ------------------------------------------------------------------------------------------------
# Signing (the `sign` extra)
# ------------------------------------------------------------------------------------------------


def _keys(folder: Path, name: str) -> tuple[Path, Path]:
    pytest.importorskip("model_signing", reason="the sign extra (model-signing) is not installed")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private, public = folder / f"{name}.pem", folder / f"{name}.pub.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


@pytest.fixture
def signed(unet_onnx, tmp_path):
    """``(model, private key, public key)``: a copy of the U-Net signed with `segdeploy sign`."""
    private, public = _keys(tmp_path, "key")
    model = tmp_path / "unet.onnx"
    shutil.copy(unet_onnx, model)
    result = runner.invoke(app, ["sign", str(model), "--key", str(private)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "unet.onnx.sig").is_file()
    return model, private, public


def _verify(model: Path, public: Path):
    return runner.invoke(app, ["verify", str(model), "--signature", "--public-key", str(public)])


def _refused(result) -> str:
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


def test_sign_then_verify_passes_and_the_signed_file_opens(signed, photo):
    model, _, public = signed
    result = _verify(model, public)
    assert result.exit_code == 0, result.output
    assert "signature" in result.output and "valid" in result.output
    assert "content sha256" in result.output  # the recorded hashes are checked as well
    mask = open_model(model, provider="cpu", require_signature=public).predict(photo)
    np.testing.assert_array_equal(mask, open_model(model, provider="cpu").predict(photo))


def test_one_changed_byte_is_refused(signed):
    model, _, public = signed
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the weights: ONNX Runtime would still open it
    model.write_bytes(bytes(data))
    assert "was changed after it was signed" in _refused(_verify(model, public))
    with pytest.raises(SegdeployError, match="was changed after it was signed"):
        open_model(model, provider="cpu", require_signature=public)


def test_an_unsigned_file_is_refused(unet_onnx, tmp_path):
    _, public = _keys(tmp_path, "key")
    model = tmp_path / "unsigned.onnx"
    shutil.copy(unet_onnx, model)
    assert "is not signed" in _refused(_verify(model, public))
    with pytest.raises(SegdeployError, match="is not signed"):
        open_model(model, provider="cpu", require_signature=public)


def test_a_signature_by_another_key_is_refused(signed, tmp_path):
    model, _, _ = signed
    _, other = _keys(tmp_path, "other")
    assert "was not made with the private key of" in _refused(_verify(model, other))
    with pytest.raises(SegdeployError, match="was not made with the private key"):
        open_model(model, provider="cpu", require_signature=other)


def test_a_signature_copied_from_another_file_is_refused(signed, resnet_onnx):
    model, _, public = signed
    other = model.with_name("resnet.onnx")
    shutil.copy(resnet_onnx, other)
    shutil.copy(model.with_name("unet.onnx.sig"), other.with_name("resnet.onnx.sig"))
    assert "was changed after it was signed" in _refused(_verify(other, public))


def test_sign_refuses_an_existing_signature_without_force(signed):
    model, private, _ = signed
    assert "--force" in _refused(runner.invoke(app, ["sign", str(model), "--key", str(private)]))
    ok = runner.invoke(app, ["sign", str(model), "--key", str(private), "--force"])
    assert ok.exit_code == 0, ok.output


def test_verify_signature_needs_a_public_key(signed):
    model, _, _ = signed
    result = runner.invoke(app, ["verify", str(model), "--signature"])
    assert "--public-key" in _refused(result)


def test_require_signature_refuses_bytes(signed):
    model, _, public = signed
    with pytest.raises(SegdeployError, match="verify the file they came from"):
        open_model(model.read_bytes(), require_signature=public)
