"""``segdeploy sign``: sign an artifact with a private key (the ``sign`` extra, offline)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from segdeploy.cli.console import console
from segdeploy.cli.options import Force


def sign(
    model: Annotated[Path, typer.Argument(metavar="FILE", help="The artifact to sign.")],
    key: Annotated[
        Path,
        typer.Option(
            "--key",
            metavar="PRIVATE_KEY",
            help="PEM elliptic-curve private key (P-256, P-384 or P-521).",
        ),
    ],
    signature: Annotated[
        Path | None,
        typer.Option(help="Where to write the signature \\[default: FILE.sig beside FILE]."),
    ] = None,
    force: Force = False,
) -> None:
    """Sign FILE with PRIVATE_KEY (OpenSSF model-signing, no network); check it with
    `segdeploy verify FILE --signature --public-key KEY`."""
    from segdeploy.core.signing import sign_file

    out = sign_file(model, key, signature, force=force)
    console.print(f"wrote {out}", highlight=False, soft_wrap=True)
