"""The one way segdeploy puts an artifact in place: build beside it, gate, rename into place.

Every file and folder segdeploy writes as a result goes through here: checkpoints and trainer
state, exports and their parity reports, the end-to-end graph, INT8/FP16/bf16 variants and their
gate reports, Triton model folders, ``evaluate --json``, bench results and ``predict``'s masks.
The rules, in the order they are checked:

* **Names.** Where a *name* is asked (a Triton model name), it must be one plain path component:
  not empty, not ``.`` or ``..``, no ``/`` or ``\\`` (:func:`check_name`).
* **Never onto an input.** A destination that resolves (``Path.resolve``, symlinks followed) to
  one of the command's inputs, to something already inside an input folder, to a folder holding
  an input, or to its own folder or one above it is refused, ``force`` or not
  (:func:`refuse_overlap`): replacing what a command reads, or the
  folder that holds the destination, is never what the user meant.
* **Existing outputs.** Replaced only with ``force``; otherwise one sentence naming the file and
  ``--force`` (:func:`refuse_existing`).
* **One writer per destination.** ``.x.lock`` beside ``x``, created with ``O_CREAT | O_EXCL``
  (atomic on local file systems), is held from the checks to the rename (:func:`lock`); a second
  writer is refused at once with "another <what> to x is in progress". A lock left by a process
  that is gone from this machine (or, from another machine, older than
  :data:`STALE_LOCK_SECONDS`) is taken over.
* **Build beside, then rename.** Files are written to a hidden temporary sibling (same folder,
  so :func:`os.replace` is atomic) and renamed once the gate passed; a failed gate, an exception,
  Ctrl-C or SIGKILL leaves the old file or none, never half a file. A pair (export + parity
  report, variant + gate report) is staged whole first, then renamed back to back
  (:class:`Staging`).
* **Folders** (:func:`publish_folder`) are built as ``.x.new`` beside ``x``; the old one is
  renamed to ``.x.old``, the new one to ``x``, and only then is the old renamed to ``.x.trash``
  and deleted. At every moment ``x`` or ``.x.old`` is a whole folder. The one window where ``x``
  is missing is between the first two renames (two system calls); the next publisher to ``x``
  finds ``.x.old`` without ``x`` and renames it back (the swap did not happen), or finds both and
  deletes ``.x.old`` (it did); ``.x.new`` (a build that never finished) and ``.x.trash`` (a
  deletion that never finished) are deleted.
* **Ctrl-C waits for the renames.** SIGINT and SIGTERM that arrive while a pair is renamed or a
  folder swapped and its old copy deleted are held until that is done, then delivered as usual
  (:func:`_signals_deferred`); only SIGKILL can stop it halfway, and the recovery above covers it.

Temporary files are created with mode 0o666 through ``os.open``, so the process umask applies as
it does for ``open()`` without anyone changing it (a umask flip would race with other threads).

Torch-free; imports nothing of segdeploy but its errors.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from segdeploy.core.errors import SegdeployError

#: A lock from another machine older than this is stale (its process cannot be asked).
STALE_LOCK_SECONDS = 3600.0
#: A lock file still empty after this long was left by a writer that died while creating it.
EMPTY_LOCK_GRACE_SECONDS = 60.0
#: Mode asked for when creating files: the umask takes its bits away, as for ``open()``.
FILE_MODE = 0o666

Writer = Callable[[Path], object]


# ------------------------------------------------------------------------------------------------
# Checks
# ------------------------------------------------------------------------------------------------


def check_name(name: str, what: str = "name") -> str:
    """Return ``name`` if it is one plain path component; else raise one sentence.

    Refused: empty, ``.``, ``..``, anything with ``/``, ``\\`` or a NUL byte (each would make
    ``folder / name`` point somewhere other than a new entry of ``folder``).
    """
    bad = not name or name in (".", "..") or any(c in name for c in "/\\\0") or name != name.strip()
    if bad:
        raise SegdeployError(
            f"{what}: expected one plain file or folder name (no '/', '\\', '.', '..' or "
            f"surrounding spaces), found {name!r}"
        )
    return name


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or path.is_relative_to(folder)


def refuse_overlap(
    out: str | Path, inputs: Iterable[str | Path] = (), what: str = "output"
) -> None:
    """Refuse ``out`` when it resolves to an input, to an existing file or folder inside an input
    folder (a data folder's image), to a folder holding an input, or to its own folder or a
    folder above it. Applies with ``force`` too.

    Raises:
        SegdeployError: one sentence naming ``out`` and what it would replace.
    """
    out = Path(out)
    resolved = out.resolve()
    parent = out.absolute().parent.resolve()
    if _is_within(parent, resolved):
        raise SegdeployError(
            f"{what} {out}: expected a new entry inside {out.parent}, found it resolves to "
            f"{resolved}, the folder that would hold it (or one above); replacing it would "
            "delete everything there"
        )
    for item in inputs:
        source = Path(item).resolve()
        if resolved == source:
            raise SegdeployError(
                f"{what} {out}: expected a path other than the input {item}, found the same "
                "file; choose another output (--force never replaces an input)"
            )
        if _is_within(source, resolved):
            raise SegdeployError(
                f"{what} {out}: expected a path that does not hold the input {item}, found it "
                "does; choose another output (--force never replaces an input)"
            )
        if source.is_dir() and resolved.is_relative_to(source) and resolved.exists():
            raise SegdeployError(
                f"{what} {out}: expected a path other than the files of the input folder "
                f"{item}, found one of them; choose another output (--force never replaces an "
                "input)"
            )


def refuse_existing(out: str | Path, force: bool) -> None:
    """Without ``force``, refuse an ``out`` that exists (a file, a folder or a dangling link)."""
    out = Path(out)
    if not force and (out.exists() or out.is_symlink()):
        raise SegdeployError(f"{out} already exists; pass --force to replace it")


# ------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------


@contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Turn an OSError while writing ``path`` (a full disk, a file-size limit, a folder where a
    file should go) into one sentence naming it; everything else passes through."""
    try:
        yield
    except SegdeployError:
        raise
    except Exception as err:
        # Writers wrap the disk's error: torch.save's zip writer raises a RuntimeError while
        # handling the OSError (EFBIG, ENOSPC) of the write underneath.
        cause = _os_error_in_chain(err)
        if cause is None:
            raise
        reason = cause.strerror or type(cause).__name__
        raise SegdeployError(f"cannot write {path}: {reason}; nothing was replaced") from None


def _os_error_in_chain(err: BaseException | None) -> OSError | None:
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def refuse_folder(out: str | Path, what: str = "output") -> None:
    """Refuse a file destination ``out`` that is an existing folder, ``force`` or not."""
    out = Path(out)
    if out.is_dir():
        raise SegdeployError(f"{what} {out}: expected a file name, found a folder")


def _ensure_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SegdeployError(f"cannot write to folder {folder} ({err.strerror})") from None
    if not folder.is_dir():
        raise SegdeployError(f"cannot write to folder {folder} (it is not a folder)")


def temp_sibling(path: str | Path) -> Path:
    """Create an empty hidden file beside ``path`` (``.x.<random>.tmp``) and return its path.

    Created with ``os.open(..., 0o666)``: the umask applies itself, so the file gets the mode
    ``open()`` would give ``path``.
    """
    path = Path(path)
    _ensure_folder(path.parent)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE))
        except FileExistsError:
            continue
        except OSError as err:
            raise SegdeployError(f"cannot write to folder {path.parent} ({err.strerror})") from None
        return tmp
    raise SegdeployError(f"cannot write to folder {path.parent} (no free temporary name)")


def write_file(path: str | Path, write: Writer) -> Path:
    """Call ``write(tmp)`` on a temporary sibling of ``path`` and rename it onto ``path`` only
    when it returned: a crash or Ctrl-C leaves the old file or none, never a half-written one.

    No existence check, no lock: for files a command owns outright (a mask of this run, the
    checkpoint of this run's next epoch). What a user names goes through :func:`publish_file`.
    """
    path = Path(path)
    refuse_folder(path)
    tmp = temp_sibling(path)
    try:
        with _writing(path):
            write(tmp)
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


class Staging:
    """Files written beside their destinations, renamed into place together by :meth:`commit`.

    The first staged file is the primary (the model); the rest are its companions (reports).
    :meth:`commit` removes the old companions first, then renames the primary, then the
    companions, back to back: a reader may find a primary without its report for the length of
    a rename, never a report that describes another file.
    """

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []  # (temporary file, destination)

    def stage(self, path: str | Path, write: Writer) -> Path:
        """Write ``path``'s new content with ``write(tmp)``; returns the temporary file (to gate
        it, or to read it back)."""
        path = Path(path)
        tmp = temp_sibling(path)
        self._staged.append((tmp, path))
        with _writing(path):
            write(tmp)
        return tmp

    def commit(self) -> None:
        """Rename every staged file into place (see the class docstring for the order)."""
        with _signals_deferred():  # Ctrl-C never lands between the renames of a pair
            for _, path in self._staged[1:]:
                path.unlink(missing_ok=True)
            for tmp, path in self._staged:
                with _writing(path):
                    os.replace(tmp, path)
            self._staged.clear()

    def discard(self) -> None:
        """Remove what was staged and not committed."""
        for tmp, _ in self._staged:
            tmp.unlink(missing_ok=True)
        self._staged.clear()


@contextmanager
def publishing(
    out: str | Path,
    what: str = "output",
    force: bool = False,
    inputs: Iterable[str | Path] = (),
) -> Iterator[Staging]:
    """Check ``out``, hold its lock and yield a :class:`Staging`; commit it when the block ends
    without an exception (the gate inside passed), discard it otherwise.

    Args:
        out: the destination (the primary file).
        what: what is written, for messages ("export", "INT8 variant", ...).
        force: replace an existing ``out``.
        inputs: files the command reads; ``out`` must not be one of them.

    Raises:
        SegdeployError: see :func:`refuse_overlap`, :func:`refuse_existing` and :func:`lock`.
    """
    out = Path(out)
    inputs = list(inputs)
    refuse_overlap(out, inputs, what)
    refuse_existing(out, force)
    with lock(out, what):
        refuse_existing(out, force)  # another writer may have finished while we looked
        refuse_folder(out, what)
        staging = Staging()
        try:
            yield staging
            staging.commit()
        finally:
            staging.discard()


def publish_file(
    out: str | Path,
    write: Writer,
    what: str = "output",
    force: bool = False,
    inputs: Iterable[str | Path] = (),
) -> Path:
    """:func:`publishing` of one file written by ``write(tmp)``; returns ``out``."""
    with publishing(out, what, force, inputs) as staging:
        staging.stage(out, write)
    return Path(out)


# ------------------------------------------------------------------------------------------------
# Folders
# ------------------------------------------------------------------------------------------------


def _aside(out: Path, kind: str) -> Path:
    return out.with_name(f".{out.name}.{kind}")


def recover_folder(out: str | Path) -> None:
    """Finish or undo a folder replacement that a killed process left (hold ``out``'s lock).

    ``.x.old`` without ``x``: the swap stopped between its renames; the old folder goes back.
    ``.x.old`` beside ``x``: the swap happened; the old folder is deleted. ``.x.new`` (a build
    that never finished) and ``.x.trash`` (a deletion that never finished): deleted.
    """
    out = Path(out)
    old, trash = _aside(out, "old"), _aside(out, "trash")
    for leftover in (_aside(out, "new"), trash):
        if leftover.is_dir():
            shutil.rmtree(leftover)
    if old.is_dir():
        if out.exists() or out.is_symlink():
            os.replace(old, trash)
            shutil.rmtree(trash)
        else:
            os.replace(old, out)


def publish_folder(
    out: str | Path,
    build: Callable[[Path], object],
    what: str = "folder",
    force: bool = False,
    inputs: Iterable[str | Path] = (),
) -> Path:
    """Build a folder with ``build(tmp_folder)`` beside ``out`` and swap it into place.

    The old ``out`` (with ``force``) is renamed aside, the new one renamed in, then the old one
    deleted; an exception or interruption in ``build`` leaves the old folder as it was (see the
    module docstring for the one window and its recovery). Returns ``out``.

    Raises:
        SegdeployError: see :func:`publishing`; an existing ``out`` that is not a folder.
    """
    out = Path(out)
    inputs = list(inputs)
    refuse_overlap(out, inputs, what)
    with lock(out, what):
        recover_folder(out)
        refuse_existing(out, force)
        if out.exists() and not out.is_dir():
            raise SegdeployError(f"{what} {out}: expected a folder to replace, found a file")
        new, old = _aside(out, "new"), _aside(out, "old")
        try:
            with _writing(out):
                new.mkdir()  # 0o777 less the umask, as any folder
                build(new)
        except BaseException:
            shutil.rmtree(new, ignore_errors=True)
            raise
        with _signals_deferred():  # the swap and the deletion are not left halfway by Ctrl-C
            if out.exists():
                os.replace(out, old)
            os.replace(new, out)  # from here the new folder is in place; the old is a leftover
            if old.exists():
                trash = _aside(out, "trash")
                os.replace(old, trash)  # whole under .x.old, or being deleted under .x.trash
                shutil.rmtree(trash, ignore_errors=True)
    return out


_DEFERRED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the block ends, then deliver them to the usual handlers.

    Only the main thread can set handlers; elsewhere the block runs as it is (the recovery in
    :func:`recover_folder` still applies). SIGKILL cannot be held; that is what recovery is for.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {
        sig: signal.signal(sig, lambda sig, _frame: received.append(sig))
        for sig in _DEFERRED_SIGNALS
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(received):
            signal.raise_signal(sig)


# ------------------------------------------------------------------------------------------------
# The lock
# ------------------------------------------------------------------------------------------------


def lock_path(out: str | Path) -> Path:
    """``x`` -> ``.x.lock`` beside it: held by whoever writes ``x`` (``.`` and ``..`` are named
    by the folder they resolve to)."""
    out = Path(out)
    if out.name in ("", ".", ".."):
        out = out.resolve()
    if not out.name:  # the root folder
        return out / ".segdeploy.lock"
    return out.with_name(f".{out.name}.lock")


@contextmanager
def lock(out: str | Path, what: str = "output") -> Iterator[Path]:
    """Hold the exclusive lock of the destination ``out`` for the ``with`` block.

    The lock is ``.x.lock`` beside ``out``, created with ``O_CREAT | O_EXCL`` and removed when the
    block ends, however it ends. A lock is stale, and taken over once, when the process that
    wrote it is gone from this machine, when it was written on another machine more than
    :data:`STALE_LOCK_SECONDS` ago, or when it stayed empty for
    :data:`EMPTY_LOCK_GRACE_SECONDS`.

    Raises:
        SegdeployError: another writer holds the lock ("another <what> to <out> is in
            progress"), or the folder is unwritable.
    """
    out = Path(out)
    path = lock_path(out)
    _ensure_folder(path.parent)
    _acquire(path, out, what)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def _acquire(path: Path, out: Path, what: str) -> None:
    """Create ``path`` exclusively (taking over a stale lock once), recording who holds it."""
    for attempt in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if attempt == 0 and _is_stale(path):
                path.unlink(missing_ok=True)
                continue
            raise SegdeployError(
                f"another {what} to {out} is in progress ({_holder(path)}); wait for it to "
                f"finish, or delete {path} if none is running"
            ) from None
        except OSError as err:
            raise SegdeployError(f"cannot write to folder {path.parent} ({err.strerror})") from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        with os.fdopen(fd, "w") as handle:
            json.dump(holder, handle)
        return


def _read_lock(path: Path) -> dict[str, Any] | None:
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # gone, or created but not yet written by its owner
    return holder if isinstance(holder, dict) else None


def _holder(path: Path) -> str:
    holder = _read_lock(path)
    if not holder:
        return f"lock {path}"
    return f"process {holder.get('pid')} on {holder.get('host')} holds {path}"


def _is_stale(path: Path) -> bool:
    """Whether the writer that created the lock ``path`` is gone."""
    try:
        age = time.time() - path.stat().st_mtime
    except OSError:
        return True  # released between our attempt and this look: try again
    holder = _read_lock(path)
    if holder is None:
        return age > EMPTY_LOCK_GRACE_SECONDS
    if holder.get("host") != socket.gethostname():
        return age > STALE_LOCK_SECONDS  # cannot ask another machine about its processes
    try:
        pid = int(holder.get("pid", 0))
    except (TypeError, ValueError):
        return True
    return not process_alive(pid)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (assumed so where that cannot be asked)."""
    if pid <= 0 or os.name == "nt":  # on Windows os.kill(pid, 0) would terminate the process
        return pid > 0
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True
