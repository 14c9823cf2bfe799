"""Signed artifacts: ``segdeploy sign``, ``verify --signature``, ``open_model(require_signature=)``.

Signing uses the OpenSSF ``model-signing`` package (the ``sign`` extra) in its key-pair mode:
an elliptic-curve private key (PEM; P-256, P-384 or P-521) signs an in-toto statement of the
file's sha256, written as a Sigstore bundle (JSON) beside the model, ``x.onnx`` ->
``x.onnx.sig``. Nothing goes over the network: no transparency log, no certificate authority;
trust is the public key the verifier is given. The signature covers the whole file, card
included, and stays valid if the file is renamed (it names no path).

The signature is written through :func:`segdeploy.core.publish.publish_file` (a temporary
sibling renamed into place; an existing signature is replaced only with ``force``).
Torch-free and onnx-free: the runtime imports it; ``model_signing`` is imported only when used.
"""

from __future__ import annotations

import os
from pathlib import Path

from segdeploy.core.errors import SegdeployError, first_line
from segdeploy.core.publish import publish_file

#: What a signature's name adds to its model's: ``x.onnx`` -> ``x.onnx.sig``.
SIGNATURE_SUFFIX = ".sig"
SIGN_HINT = "pip install 'segdeploy[sign]'"


def signature_path(model: str | os.PathLike) -> Path:
    """Where the signature of ``model`` lies: beside it, ``x.onnx`` -> ``x.onnx.sig``."""
    model = Path(model)
    return model.with_name(model.name + SIGNATURE_SUFFIX)


def _model_signing():
    try:
        import model_signing
    except ImportError:
        raise SegdeployError(
            "signing needs the OpenSSF model-signing package, which is not installed here; "
            f"{SIGN_HINT}"
        ) from None
    return model_signing


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise SegdeployError(f"{what} {path}: expected an existing file, found nothing")


def sign_file(
    model: str | os.PathLike,
    private_key: str | os.PathLike,
    signature: str | os.PathLike | None = None,
    password: str | None = None,
    force: bool = False,
) -> Path:
    """Sign ``model`` with the PEM elliptic-curve ``private_key``; returns the signature's path
    (``signature``, by default :func:`signature_path` of ``model``).

    Raises:
        SegdeployError: a missing model or key, a key that is not an EC private key, an existing
            signature without ``force``, or the ``sign`` extra not installed.
    """
    model, private_key = Path(model), Path(private_key)
    out = Path(signature) if signature else signature_path(model)
    _require_file(model, "model")
    _require_file(private_key, "private key")
    signing = _model_signing().signing
    try:
        config = signing.Config().use_elliptic_key_signer(
            private_key=private_key, password=password
        )
    except (ValueError, TypeError, AttributeError) as err:  # AttributeError: not an EC key
        raise SegdeployError(
            f"private key {private_key}: expected a PEM elliptic-curve private key (P-256, P-384 "
            f"or P-521), found one it cannot load ({first_line(err)})"
        ) from None
    return publish_file(
        out,
        lambda tmp: config.sign(model, tmp),
        what="signature",
        force=force,
        inputs=[model, private_key],
    )


def verify_signature(
    model: str | os.PathLike,
    public_key: str | os.PathLike,
    signature: str | os.PathLike | None = None,
) -> str:
    """Check that ``signature`` (by default beside ``model``) was made by the private key of
    ``public_key`` over exactly ``model``'s bytes; returns one line saying so.

    Raises:
        SegdeployError: one sentence for an unsigned file, a file changed after signing, a
            signature made with another key, an unreadable signature or key, or the ``sign``
            extra not installed.
    """
    model, public_key = Path(model), Path(public_key)
    sig = Path(signature) if signature else signature_path(model)
    _require_file(model, "model")
    _require_file(public_key, "public key")
    if not sig.is_file():
        raise SegdeployError(
            f"{model} is not signed: expected its signature {sig}, found nothing; sign it with "
            f"`segdeploy sign {model} --key PRIVATE_KEY`"
        )
    verifying = _model_signing().verifying
    try:
        config = verifying.Config().use_elliptic_key_verifier(public_key=public_key)
    except (ValueError, TypeError, AttributeError) as err:  # AttributeError: not an EC key
        raise SegdeployError(
            f"public key {public_key}: expected a PEM elliptic-curve public key, found one it "
            f"cannot load ({first_line(err)})"
        ) from None
    try:
        config.verify(model, sig)
    except Exception as err:  # model_signing raises ValueError, JSON and crypto errors alike
        raise SegdeployError(_refusal(model, sig, public_key, err)) from None
    return f"{model}: signature {sig} is valid for public key {public_key}"


def _refusal(model: Path, sig: Path, public_key: Path, err: Exception) -> str:
    """model_signing's failure, as one sentence naming the files."""
    text = str(err)
    if text.startswith("Signature mismatch"):
        return (
            f"{model} was changed after it was signed: its sha256 differs from the one {sig} "
            "signs; do not use it"
        )
    if text.startswith("Key mismatch") or "InvalidSignature" in type(err).__name__:
        return (
            f"{model}: its signature {sig} was not made with the private key of {public_key}; "
            "do not trust it with this key"
        )
    return (
        f"{model}: expected a model-signing signature in {sig}, found one it cannot read "
        f"({type(err).__name__}: {first_line(err)})"
    )
