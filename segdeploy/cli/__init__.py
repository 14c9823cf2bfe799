"""The ``segdeploy`` command line."""

from segdeploy.cli.commands import app, main

__all__ = ["app", "main"]
