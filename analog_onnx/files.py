"""Files analog-onnx writes and reads on the user's behalf, made safe in one place.

Writing: every output goes through :func:`atomic_outputs`. The files are written into a private
staging folder beside the target (``.NAME.XXXX.tmp/NAME``) under their final names, then renamed
into place only when all of them are complete; the staging folder is removed on any exception,
including the ``SystemExit`` that :func:`unwind_on_sigterm` makes of SIGTERM. An OS error while
writing (a full disk, a quota, a read-only file system) is one :class:`AnalogError` naming the
output, and the targets stay as they were. Every file gets
the mode the user's umask gives an ordinary file, whatever mode the writing library chose. An
output that is a folder, a FIFO, socket or device (replacing it would swap the node itself for
a file), one of the inputs, or an existing file without ``force`` is refused before anything is
written; a symbolic link to a regular file is replaced itself with ``force``, never the file it
names. A set of files made over a long time (a training run) is written
into a staging folder by :func:`replacing_files` and replaces the old set only once complete.

Reading: :func:`readable_file` lets a command read only a regular file it can open, and says
what the path is otherwise (a folder, a FIFO, unreadable); :func:`read_small_text` reads a user's
text file (a config) only when it is also of bounded size, so ``-c /dev/zero`` or a FIFO cannot
make a command read forever.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import tempfile
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from analog_onnx.errors import AnalogError

PathLike = str | Path
MAX_TEXT_BYTES = 1 << 20  # configs are a few KB; anything bigger is not one


def unwind_on_sigterm() -> None:
    """Make SIGTERM raise SystemExit (status 128 + 15), so ``finally`` blocks run and staging
    folders are removed, as on Ctrl-C. Call it in a command's main thread."""

    def terminate(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)


def node_kind(path: Path) -> str:
    """What a file-system entry that is neither a folder nor a regular file is, in words."""
    mode = path.stat().st_mode
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a special file"


def first_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message (libraries write pages), or its type."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def output_file(text: str) -> Path:
    """The output file ``text`` names. One that ends in a separator, ``.`` or ``..`` names a folder:
    refused here, as typed, because ``Path`` drops a trailing separator (``new/`` becomes ``new``)."""
    if os.path.basename(text) in ("", ".", ".."):
        raise AnalogError(f"output {text} names a folder; give a file name")
    return Path(text)


def check_output(path: PathLike, *, force: bool = False, inputs: Collection[PathLike] = ()) -> Path:
    """``path`` as an output file, or one clear error: a folder, not a regular file (replacing a
    FIFO or a device would swap the node itself for a file), an input, or existing without force.
    A symbolic link to a regular file is replaced itself with ``force``; the file it names stays.
    A string is read as typed (:func:`output_file`)."""
    path = (output_file(path) if isinstance(path, str) else Path(path)).expanduser()
    if path.is_dir():
        raise AnalogError(f"output {path} is a folder; give a file name")
    if path.exists() and not path.is_file():
        raise AnalogError(f"output {path} is {node_kind(path)}, not a regular file; give a file name")
    if path.exists() or path.is_symlink():  # a dangling link is there too
        for source in inputs:
            if path.exists() and Path(source).exists() and os.path.samefile(path, source):
                raise AnalogError(f"output {path} is an input of this command; choose another output")
        if not force:
            raise AnalogError(f"output {path} exists; pass --force to overwrite it")
    if not path.parent.is_dir():
        raise AnalogError(f"output folder {path.parent} does not exist")
    return path


@contextmanager
def atomic_outputs(*targets: PathLike, force: bool = False, inputs: Collection[PathLike] = ()
                   ) -> Iterator[list[Path]]:
    """Yield one scratch path per target (same folder, same names); they replace the targets
    together when the block ends normally, and vanish when it does not."""
    checked = [check_output(t, force=force, inputs=inputs) for t in targets]
    folder = checked[0].parent
    if any(t.parent.resolve() != folder.resolve() for t in checked):
        raise ValueError("atomic_outputs needs all targets in one folder")
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{checked[0].name}.", suffix=".tmp", dir=folder))
    except OSError as e:
        raise AnalogError(f"cannot write into {folder}: {e.strerror}") from None
    try:
        scratch = [staging / t.name for t in checked]
        yield scratch
        for source, target in zip(scratch, checked, strict=True):  # the last target (the model) last
            os.chmod(source, _usual_mode(source))
            os.replace(source, target)
    except OSError as error:
        written = ", ".join(str(t) for t in checked)
        raise AnalogError(f"cannot write {written}: {error.strerror or first_line(error)}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _usual_mode(path: Path) -> int:
    """The mode a plain ``open``/``touch`` would give (executables keep their x bits), whatever
    mode the writing library chose: some write private 0600 files."""
    mask = os.umask(0)
    os.umask(mask)
    executable = os.stat(path).st_mode & 0o111
    return (0o777 if executable else 0o666) & ~mask


@contextmanager
def atomic_output(target: PathLike, *, force: bool = False, inputs: Collection[PathLike] = ()) -> Iterator[Path]:
    """:func:`atomic_outputs` for one file."""
    with atomic_outputs(target, force=force, inputs=inputs) as (scratch,):
        yield scratch


@contextmanager
def replacing_files(folder: PathLike, names: Collection[str]) -> Iterator[Path]:
    """Yield an empty staging folder inside ``folder`` for a new set of the files ``names``. When
    the block ends normally the new set replaces the old one in ``folder`` (an old file the new
    set lacks is removed: nothing of the old set passes for part of the new one); when it does
    not, the staging folder vanishes and the old set stays as it was."""
    folder = Path(folder).expanduser()
    try:
        staging = Path(tempfile.mkdtemp(prefix=".replacing.", suffix=".tmp", dir=folder))
    except OSError as e:
        raise AnalogError(f"cannot write into {folder}: {e.strerror}") from None
    try:
        yield staging
        try:
            for name in names:
                if (staging / name).exists():
                    os.replace(staging / name, folder / name)
                else:
                    (folder / name).unlink(missing_ok=True)
        except OSError as error:
            raise AnalogError(f"cannot write into {folder}: {error.strerror or first_line(error)}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_with(target: PathLike, write: Callable[[BinaryIO], Any], *, force: bool = False,
               inputs: Collection[PathLike] = ()) -> Path:
    """Call ``write(binary_file)`` and put the result at ``target`` atomically; returns the path."""
    with atomic_output(target, force=force, inputs=inputs) as scratch, open(scratch, "wb") as handle:
        write(handle)
    return Path(target).expanduser()


def write_bytes(target: PathLike, data: bytes, **kwargs: Any) -> Path:
    return write_with(target, lambda handle: handle.write(data), **kwargs)


def write_text(target: PathLike, text: str, **kwargs: Any) -> Path:
    return write_bytes(target, text.encode(), **kwargs)



def readable_file(path: PathLike, what: str) -> Path:
    """``path`` as a regular file this process may read, or one error that says what it is
    instead: missing, a folder, a FIFO (reading one can block forever) or a device, unreadable."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise AnalogError(f"{path} is a folder, not a {what}")
    if not path.exists():
        raise AnalogError(f"no such {what}: {path}")
    if not path.is_file():
        raise AnalogError(f"{path} is {node_kind(path)}, not a {what}")
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise AnalogError(f"cannot read {what} {path}: {e.strerror}") from None
    return path


def read_small_text(path: PathLike, what: str, limit: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text of a regular file of at most ``limit`` bytes; anything else is one error."""
    path = readable_file(path, what)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(limit + 1)
    except OSError as e:
        raise AnalogError(f"cannot read {what} {path}: {e.strerror}") from None
    if len(raw) > limit:
        raise AnalogError(f"{what} {path} is larger than {limit // 1024} KiB; that is not a {what}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise AnalogError(f"{what} {path} is not UTF-8 text (byte {e.start})") from None
