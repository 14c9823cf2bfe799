"""The ``segdeploy`` command line: thin Typer commands that parse, call the library, and print.

app      the Typer app, commands registered in pipeline order; ``main``
errors   the one error path and the exit-code table
console  stdout / stderr consoles
tables   training summary, parity and benchmark tables
train, export (export, verify, quantize, convert-fp16), predict (predict, info, models),
bench, demo: one module per command group
"""

from segdeploy.cli.app import app, main

__all__ = ["app", "main"]
