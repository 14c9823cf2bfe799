"""The command line's one error path and its exit codes.

Every command is registered through :func:`one_error_path`: a :class:`SegdeployError` becomes one
red sentence on stderr and a non-zero exit (no traceback), Ctrl-C exit code 130. Any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import typer
from rich.markup import escape

from segdeploy.cli.console import err_console
from segdeploy.core.errors import ProviderUnavailableError, SegdeployError

#: Exit code of any :class:`SegdeployError` a command has no entry for in ``COMMAND_EXIT_CODES``.
EXIT_ERROR = 1
#: ``bench --provider cuda`` where ONNX Runtime cannot use CUDA: exit 2, never a CPU figure
#: labelled CUDA. (``predict`` and ``verify`` asked for an unusable CUDA exit with 1.)
EXIT_PROVIDER_UNAVAILABLE = 2
#: Interrupted with Ctrl-C (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130
#: Exit codes particular to one command: ``{command name: {error type: code}}``.
COMMAND_EXIT_CODES: dict[str, dict[type[SegdeployError], int]] = {
    "bench": {ProviderUnavailableError: EXIT_PROVIDER_UNAVAILABLE},
}


def exit_code(command_name: str, error: SegdeployError) -> int:
    """The exit code of ``error`` raised by the command ``command_name``."""
    codes = COMMAND_EXIT_CODES.get(command_name, {})
    return next((codes[kind] for kind in type(error).__mro__ if kind in codes), EXIT_ERROR)


def one_error_path(command_name: str, command: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``command`` so that a :class:`SegdeployError` is one red sentence and its exit code,
    and Ctrl-C leaves with :data:`EXIT_INTERRUPTED` (no traceback either way)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any):
        try:
            return command(*args, **kwargs)
        except SegdeployError as err:
            err_console.print(
                f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True
            )
            raise typer.Exit(exit_code(command_name, err)) from None
        except KeyboardInterrupt:
            err_console.print("[bold red]interrupted[/]: nothing half-written was left behind")
            raise typer.Exit(EXIT_INTERRUPTED) from None

    return wrapper
