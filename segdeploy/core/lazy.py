"""Package attributes loaded on first use (PEP 562), so a light module of a heavy package stays
light: ``segdeploy.export.quantize`` needs no torch, ``segdeploy.train.config`` neither, yet
``from segdeploy.export import export_checkpoint`` reads naturally."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_attributes(package: str, homes: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``package.<homes[name]>`` when ``name`` is read."""

    def __getattr__(name: str) -> Any:
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{homes[name]}"), name)

    return __getattr__
