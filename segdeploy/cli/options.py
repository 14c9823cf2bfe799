"""Options several commands declare the same way."""

from __future__ import annotations

from typing import Annotated

import typer

#: ``--force``: replace an existing output; never an input (see :mod:`segdeploy.core.publish`).
Force = Annotated[
    bool, typer.Option("--force", help="Replace an existing output (never one of the inputs).")
]
