"""The two consoles every command prints to: results on stdout, errors and warnings on stderr."""

from __future__ import annotations

import sys

from rich.console import Console

# Rich assumes 80 columns when output is piped or captured; tables of numbers need more.
console = Console(width=None if sys.stdout.isatty() else 140)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 140)
