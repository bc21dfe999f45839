"""File-system primitives for everything decoderlm writes: atomic files, the one atomic directory
swap, the marker and lock of a directory decoderlm owns, removal of its own stale temporaries,
and the check that a path stays inside a directory.

Every temporary is named `.NAME.tmp-XXXXXXXX` beside what it becomes, so the next process that
holds the lock on the directory can recognise and remove the leftovers of a killed one, and
nothing else. Files and directories are created with the ordinary mode the umask allows (not
tempfile's private 0600/0700), since a run is meant to be copied and served. A failed write (disk
full, I/O error, read-only file system) becomes one DecoderLMError line, with its temporary removed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import secrets
import shutil
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

if TYPE_CHECKING:
    import torch

from decoderlm.errors import DecoderLMError

MARKER_NAME = ".decoderlm"  # in every run and data directory: decoderlm made it (JSON: its kind)
# Temporaries decoderlm names (and, for the second, older versions named): only these are ever
# removed as stale. `.NAME.old` is the previous copy during a directory swap.
_TEMP_NAMES = (re.compile(r"^\.(?P<name>.+)\.tmp-[a-z0-9_]{8}$"), re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$"))
_OLD_NAME = re.compile(r"^\.(?P<name>.+)\.old$")

Writer = Callable[[Path], Any]  # writes the whole content of a file at the path it is given


# -- failures ---------------------------------------------------------------------------------------
def _is_write_failure(err: BaseException) -> bool:
    # torch.save reports a full disk as RuntimeError, safetensors as SafetensorError, the Rust
    # `tokenizers` library as a bare Exception whose text ends in "(os error N)".
    from safetensors import SafetensorError  # here, not at the top: `prepare` runs without torch

    return isinstance(err, (OSError, RuntimeError, SafetensorError)) or "(os error " in str(err)


@contextlib.contextmanager
def writing(target: Path, what: str | None = None):
    """Turn a failed write to `target` into one DecoderLMError line."""
    try:
        yield
    except DecoderLMError:
        raise
    except Exception as err:  # noqa: BLE001 - narrowed by _is_write_failure; anything else re-raised
        if not _is_write_failure(err):
            raise
        reason = err.strerror if isinstance(err, OSError) and err.strerror else " ".join(str(err).split())[:160]
        raise DecoderLMError(f"cannot write {what or target}: {reason or type(err).__name__}") from None


# -- temporaries ------------------------------------------------------------------------------------
def _temp_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.tmp-{secrets.token_hex(4)}")


def _new_temp_file(target: Path) -> Path:
    while True:  # O_EXCL: a fresh file; mode 0o666 minus the umask, unlike tempfile's 0600
        path = _temp_name(target)
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666))
            return path
        except FileExistsError:
            continue


def stage_dir(target: Path) -> Path:
    """A new empty directory beside `target`, to build it in and swap it into place when complete."""
    with writing(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        while True:
            path = _temp_name(target)
            try:
                path.mkdir(0o777)  # the umask decides, as for any directory the user makes
                return path
            except FileExistsError:
                continue


def remove_tree(path: Path) -> None:
    """Remove a file, a link (not what it points to) or a directory tree; missing is fine."""
    if path.is_symlink() or path.is_file():
        with contextlib.suppress(OSError):
            path.unlink()
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)


def remove_stale(directory: Path, name: str | None = None) -> None:
    """Remove the temporaries of a killed process in `directory` (only those of `name` if given:
    `directory` is then the user's, holding decoderlm's `name`), and finish a directory swap it left
    half done. Call it only while holding the lock that every writer of these paths takes, so no
    live writer's temporary is touched."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        for pattern in _TEMP_NAMES:
            match = pattern.match(entry.name)
            if match and (name is None or match["name"] == name) and not entry.is_symlink():
                remove_tree(Path(entry.path))
        match = _OLD_NAME.match(entry.name)
        if match and (name is None or match["name"] == name) and not entry.is_symlink():
            recover_swap(directory / match["name"], require_marker=name is not None)


# -- atomic files -----------------------------------------------------------------------------------
def fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def commit_files(writers: Iterable[tuple[Path, Writer]]) -> None:
    """Write several files atomically as a group: each `(target, write)` writes a temp file beside
    its target, all are fsynced, then all are renamed into place in the given order (weights last,
    so a reader never sees new weights with an old config)."""
    pending: list[tuple[Path, Path]] = []
    target = None
    try:
        for target, write in writers:
            with writing(target):
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = _new_temp_file(target)
                pending.append((tmp, target))
                write(tmp)
                fsync_file(tmp)
        for tmp, target in pending:
            with writing(target):
                os.replace(tmp, target)
        for directory in {target.parent for _, target in pending}:
            fsync_dir(directory)
    finally:
        for tmp, _ in pending:
            tmp.unlink(missing_ok=True)


def write_file_atomic(target: str | Path, write: Writer) -> None:
    commit_files([(Path(target), write)])


def safetensors_writer(tensors: dict[str, "torch.Tensor"], metadata: dict[str, str] | None = None) -> Writer:
    from safetensors.torch import save_file  # imports torch, which `prepare` does without

    def write(path: Path) -> None:
        with contextlib.suppress(FileExistsError):  # an empty file first: its mode is what the umask allows
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666))
        mode = stat.S_IMODE(os.stat(path).st_mode)
        save_file(tensors, path, metadata=metadata)
        os.chmod(path, mode)  # safetensors writes through a private (0600) file of its own
    return write


def bytes_writer(data: bytes) -> Writer:
    return lambda tmp: Path(tmp).write_bytes(data)


def json_writer(data: Any) -> Writer:
    return lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def append_line(path: Path, line: str) -> None:
    """Append one line; never through a link (O_NOFOLLOW), so a planted link cannot redirect it."""
    with writing(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        with os.fdopen(fd, "a", encoding="utf-8") as f:
            f.write(line + "\n")


# -- the one atomic directory swap ------------------------------------------------------------------
def _old(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def recover_swap(target: Path, *, require_marker: bool = False) -> None:
    """After a swap was interrupted: if `target` is missing, its previous copy (`.NAME.old`) is the
    only complete one and goes back into place; if `target` is there, the old copy is dropped.
    With `require_marker` (in a directory that is not decoderlm's), a `.NAME.old` is touched only
    if it holds decoderlm's marker, so a user's own `.NAME.old` is never taken for one."""
    old = _old(target)
    if not old.is_dir() or old.is_symlink() or (require_marker and read_marker(old) is None):
        return
    if target.exists() or target.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
        return
    with contextlib.suppress(FileNotFoundError):  # another process may have just restored it
        old.rename(target)


def complete_dir(target: Path) -> Path | None:
    """`target`, or its previous copy while a swap is half done; None if neither exists."""
    for candidate in (target, _old(target)):
        if candidate.is_dir() and not candidate.is_symlink():
            return candidate
    return None


def replace_dir(staged: Path, target: Path, *, require_marker: bool = False) -> None:
    """Swap the complete directory `staged` into place as `target` (fsynced first). A kill at any
    moment leaves `target` or `.NAME.old` complete (see recover_swap / complete_dir)."""
    with writing(target):
        _fsync_tree(staged)
        recover_swap(target, require_marker=require_marker)
        old = _old(target)
        if old.exists() or old.is_symlink():  # not decoderlm's: renaming onto it could replace it
            raise DecoderLMError(f"cannot replace {target}: {old} is in the way (decoderlm did not make it); "
                                 f"move it elsewhere")
        if target.exists():
            target.rename(old)
        try:
            staged.rename(target)
        except OSError:
            if old.exists() and not target.exists():
                old.rename(target)
            raise
        fsync_dir(target.parent)
        shutil.rmtree(old, ignore_errors=True)



def _fsync_tree(directory: Path) -> None:
    for root, _, files in os.walk(directory):
        for file in files:
            fsync_file(Path(root) / file)
        fsync_dir(Path(root))


def refuse_nonempty(target: Path, label: str = "") -> None:
    """The one-line refusal of a target that new_directory would refuse, for commands to say before
    any work (new_directory checks again when it writes). label: how the user named it ("--out ")."""
    target = Path(target)
    if target.is_symlink() or (target.exists() and (not target.is_dir() or any(target.iterdir()))):
        raise DecoderLMError(f"{label}{target} already exists and is not an empty directory; choose a new one")


@contextlib.contextmanager
def new_directory(target: Path):
    """Build `target`, a directory that must not exist yet (or be empty), in a staged directory
    beside it (yielded): renamed into place when the block ends, removed if the block fails, so
    `target` appears whole or not at all. A non-empty `target` is refused, never replaced."""
    target = Path(target)
    refuse_nonempty(target)
    staged = stage_dir(target)
    try:
        yield staged
        with writing(target):
            _fsync_tree(staged)
            os.rename(staged, target)  # onto a missing or empty directory only: POSIX refuses a non-empty one
            fsync_dir(target.parent)
    except BaseException:
        remove_tree(staged)
        raise

# -- the marker and the lock of a directory decoderlm owns --------------------------------------------
def is_inside(root: Path, path: Path) -> bool:
    """Whether `path`, with every link on the way followed, stays inside `root`."""
    real_root = os.path.realpath(root)
    return os.path.commonpath([real_root, os.path.realpath(path)]) == real_root


def read_marker(directory: Path) -> str | None:
    """The kind ("run", "data") that decoderlm marked `directory` with; "" if the marker is there
    but its text was never completed (a killed process); None if the directory is not marked."""
    marker = directory / MARKER_NAME
    if marker.is_symlink() or not marker.is_file():
        return None
    try:
        kind = json.loads(marker.read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        return ""
    return kind if isinstance(kind, str) else ""


def _marker_text(kind: str) -> str:
    return json.dumps({"kind": kind, "made_by": "decoderlm"}) + "\n"


def write_marker(directory: Path, kind: str) -> None:
    """Mark a directory being built (e.g. a staged data directory) as decoderlm's `kind`."""
    write_file_atomic(directory / MARKER_NAME, bytes_writer(_marker_text(kind).encode()))


def foreign_entries(directory: Path) -> list[str]:
    """What in `directory` decoderlm did not put there (its marker and temporaries aside)."""
    return sorted(e.name for e in os.scandir(directory)
                  if e.name != MARKER_NAME and not any(p.match(e.name) for p in _TEMP_NAMES))


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False))
    except FileNotFoundError:
        return False


class DirectoryLock:
    """An exclusive advisory lock (flock) on a directory's marker file: one writer per directory.
    The OS releases it when the process ends, however it ends, so a killed process never leaves
    a directory locked. Hand-written: the marker is the lock file, which lock libraries would own."""

    def __init__(self, directory: Path, fd: int):
        self.directory, self._fd = directory, fd

    @classmethod
    def acquire(cls, directory: Path, kind: str) -> "DirectoryLock":
        """Lock `directory` (which must exist, be empty or hold a `kind` marker), marking it."""
        marker = directory / MARKER_NAME
        for _ in range(5):  # the marker may be swapped away (prepare) between open and flock: retry
            with writing(marker):
                fd = os.open(marker, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno in (errno.EAGAIN, errno.EACCES):
                    raise DecoderLMError(f"{directory} is in use by another decoderlm process (train, resume or "
                                         f"prepare); wait for it to finish or choose another directory") from None
                raise DecoderLMError(f"cannot lock {directory}: {err.strerror or err}") from None
            if _same_file(fd, marker):
                lock = cls(directory, fd)
                try:
                    lock._check_kind(kind)
                except BaseException:
                    lock.release()
                    raise
                return lock
            os.close(fd)
        raise DecoderLMError(f"{directory} keeps changing under another decoderlm process; try again")

    def _check_kind(self, kind: str) -> None:
        found = read_marker(self.directory)
        if found and found != kind:
            raise DecoderLMError(f"{self.directory} is a decoderlm {found} directory, not a {kind} directory; "
                                 f"choose another directory")
        if not found:  # new, or made by a process killed before it wrote the kind
            self._write_kind(kind)

    def _write_kind(self, kind: str) -> None:
        """In place: replacing the marker file would leave the lock on the old one."""
        with writing(self.directory / MARKER_NAME):
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, _marker_text(kind).encode(), 0)
            os.fsync(self._fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def claim_directory(directory: Path, kind: str, purpose: str) -> tuple[DirectoryLock, bool]:
    """Lock `directory` for writing: missing (created now), empty, or marked as a decoderlm `kind`
    directory; anything else is refused in one line naming what is in the way. Returns the lock and
    whether the directory was created here."""
    if directory.is_symlink() and not directory.is_dir():
        raise DecoderLMError(f"{directory} is a broken symbolic link; remove it or choose another directory")
    if directory.exists() and not directory.is_dir():
        raise DecoderLMError(f"{directory} exists and is not a directory")
    created = not directory.exists()
    if not created and read_marker(directory) is None:
        foreign = foreign_entries(directory)
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise DecoderLMError(f"refusing to {purpose} {directory}: it is not empty ({shown}) and not a decoderlm "
                                 f"{kind} directory; choose an empty or new directory")
    with writing(directory):
        directory.mkdir(parents=True, exist_ok=True)
    try:
        return DirectoryLock.acquire(directory, kind), created
    except DecoderLMError:
        if created:  # only if still empty: a process that raced us to it may hold it now
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise
