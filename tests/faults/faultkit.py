"""What every fault case uses: running the command line, snapshots of files, crafted bad
inputs, and :class:`Case`, the recorder of the problems a case finds (see conftest.py)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[2]
CLASSES = ("brick", "grass", "gravel", "coffee")  # real_pixels.TEXTURE_CLASSES: the data's

# The kinds of problem a case can find, in the order the totals print them.
TRACEBACK = "traceback"
WRONG_RESULT = "silent wrong result"
LOST_FILES = "lost or half-written files"
MESSAGE = "not one sentence naming the file"
FAILED = "command failed"
KINDS = (TRACEBACK, WRONG_RESULT, LOST_FILES, MESSAGE, FAILED)


# ---------------------------------------------------------------------------------------------
# Running the command line


@dataclass
class Ran:
    """What one command run gave: exit code, the two streams, and whether it raised."""

    args: tuple[str, ...]
    exit_code: int
    stdout: str
    stderr: str
    exception: BaseException | None = None

    @property
    def traceback(self) -> bool:
        """A traceback: printed (subprocess) or an exception the CLI let through (CliRunner)."""
        escaped = self.exception is not None and not isinstance(self.exception, SystemExit)
        return escaped or "Traceback" in self.stdout or "Traceback" in self.stderr

    def describe(self) -> str:
        tail = (self.stderr.strip() or self.stdout.strip())[-600:]
        if self.exception is not None and not isinstance(self.exception, SystemExit):
            tail = f"{type(self.exception).__name__}: {self.exception}"[:600]
        return f"`segdeploy {' '.join(self.args)}` exit {self.exit_code}: {tail}"


_runner = CliRunner()


def cli(*args: object, cwd: Path | None = None) -> Ran:
    """Run ``segdeploy ARGS`` in this process (CliRunner), optionally from folder ``cwd``."""
    from segdeploy.cli import app

    argv = tuple(str(a) for a in args)
    here = Path.cwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        result = _runner.invoke(app, list(argv))
    finally:
        os.chdir(here)
    return Ran(argv, result.exit_code, result.stdout, result.stderr, result.exception)


def process_env() -> dict[str, str]:
    """The environment of a ``python -m segdeploy`` subprocess: this checkout's package first."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("OMP_NUM_THREADS", "2")
    env["COLUMNS"] = "200"
    return env


def start_cli(*args: object, cwd: Path | None = None, preexec_fn=None) -> subprocess.Popen:
    """Start ``python -m segdeploy ARGS`` (as the console script runs it), streams piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "segdeploy", *(str(a) for a in args)],
        cwd=cwd,
        env=process_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=preexec_fn,
    )


def finish(process: subprocess.Popen, timeout: float = 300) -> Ran:
    """Wait for a process from :func:`start_cli`; what it gave."""
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        stderr += f"\n(killed after {timeout} s)"
    return Ran(tuple(process.args[3:]), process.returncode, stdout, stderr)


def cli_process(*args: object, cwd: Path | None = None, preexec_fn=None, timeout=300) -> Ran:
    """Run ``python -m segdeploy ARGS`` in a subprocess to its end."""
    return finish(start_cli(*args, cwd=cwd, preexec_fn=preexec_fn), timeout)


def interrupt_when(
    process: subprocess.Popen, ready, sig: int, deadline: float = 120.0, poll: float = 0.005
) -> bool:
    """Send ``sig`` to ``process`` as soon as ``ready()`` is true (or at ``deadline`` seconds);
    False when the process ended before that, so there was nothing to interrupt."""
    started = time.monotonic()
    while process.poll() is None:
        if ready() or time.monotonic() - started > deadline:
            process.send_signal(sig)
            return True
        time.sleep(poll)
    return False


# ---------------------------------------------------------------------------------------------
# Files: snapshots, temporary leftovers, crafted bad inputs


def snapshot(*roots: Path) -> dict[Path, str]:
    """``{file: sha256}`` of every file under ``roots`` (files or folders)."""
    found = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            found[path] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def leftovers(folder: Path) -> list[Path]:
    """Temporary or lock files segdeploy's writers leave when they die: hidden ``.x.*`` files,
    ``*.tmp``, ``*.partial``, ``*.lock``, hidden staging folders."""
    found = []
    for path in folder.rglob("*"):
        name = path.name
        if name.startswith(".") or name.endswith((".tmp", ".partial", ".lock", ".probe")):
            found.append(path)
    return sorted(found)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data and the CRC-32 of type + data."""
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return len(data).to_bytes(4, "big") + kind + data + crc.to_bytes(4, "big")


def write_header_bomb(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A PNG whose (valid, CRC-checked) IHDR claims ``width x height`` RGB pixels, with a few
    bytes of pixel data: a decompression bomb as far as any header reader can tell."""
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    idat = zlib.compress(b"\x00" * 64)
    data = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data + png_chunk(b"IEND", b""))
    return path


def write_truncated(source: Path, path: Path, keep: float = 0.5) -> Path:
    """The first ``keep`` share of ``source``'s bytes at ``path``."""
    data = source.read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: max(1, int(len(data) * keep))])
    return path


def write_garbage(path: Path, size: int = 4096) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(7).integers(0, 256, size, dtype=np.uint8).tobytes())
    return path


def write_image(path: Path, height: int = 40, width: int = 56, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


# ---------------------------------------------------------------------------------------------
# The checks, recorded per case


class Case:
    """The problems one case found; every check records instead of stopping the case."""

    def __init__(self, item: pytest.Item) -> None:
        self.item = item
        self.problems: list[tuple[str, str]] = []

    def problem(self, kind: str, message: str) -> None:
        self.problems.append((kind, message))
        self.item.user_properties.append(("fault", kind, message))

    def check(self, condition: bool, kind: str, message: str) -> bool:
        if not condition:
            self.problem(kind, message)
        return bool(condition)

    def refused(self, ran: Ran, names: object = (), words: tuple[str, ...] = ()) -> None:
        """A refusal: non-zero exit, no traceback, one sentence on stderr naming ``names``
        (any one of them: a path, its name, or a word) and containing every one of ``words``."""
        if ran.traceback:
            self.problem(TRACEBACK, ran.describe())
        if ran.exit_code == 0:
            self.problem(WRONG_RESULT, f"accepted (exit 0): {ran.describe()}")
            return
        lines = [line for line in ran.stderr.splitlines() if line.strip()]
        if len(lines) != 1 and not ran.traceback:
            self.problem(MESSAGE, f"expected one line on stderr, found {len(lines)}: {lines[:6]}")
        text = " ".join(lines)
        options = [names] if isinstance(names, (str, Path)) else list(names)
        spellings = {str(n) for n in options} | {Path(n).name for n in options}
        if options and not any(s in text for s in spellings):
            self.problem(MESSAGE, f"stderr does not name {sorted(spellings)}: {text[:400]!r}")
        for word in words:
            if word.lower() not in text.lower():
                self.problem(MESSAGE, f"stderr lacks {word!r}: {text[:400]!r}")

    def succeeded(self, ran: Ran) -> bool:
        if ran.traceback:
            self.problem(TRACEBACK, ran.describe())
            return False
        return self.check(ran.exit_code == 0, FAILED, ran.describe())

    def unchanged(self, before: dict[Path, str], what: str = "") -> None:
        """Every file of ``before`` still there with the same bytes."""
        for path, digest in before.items():
            if not path.is_file():
                self.problem(LOST_FILES, f"{what}{path} is gone")
            elif hashlib.sha256(path.read_bytes()).hexdigest() != digest:
                self.problem(LOST_FILES, f"{what}{path} was changed")

    def no_leftovers(self, folder: Path, allowed: tuple[str, ...] = ()) -> None:
        """No temporary, partial or lock file under ``folder`` (names in ``allowed`` aside)."""
        found = [p for p in leftovers(folder) if p.name not in allowed]
        self.check(not found, LOST_FILES, f"left behind: {[str(p) for p in found]}")

    def right(self, condition: bool, message: str) -> bool:
        return self.check(condition, WRONG_RESULT, message)


def full_disk(limit: int = 64 * 1024):
    """A ``preexec_fn`` that makes the disk full past ``limit`` bytes a file: it ignores SIGXFSZ
    (so a write past RLIMIT_FSIZE fails with EFBIG, "File too large", instead of killing the
    process) and sets RLIMIT_FSIZE, as a full disk or a quota does to the writer."""

    def limit_files() -> None:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return limit_files
