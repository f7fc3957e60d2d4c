"""Atomic output files and up-front writability checks.

Outputs are written to a temporary file in the destination folder and renamed over the target with
``os.replace`` (atomic on POSIX and Windows), so a crash or a cancel never leaves half a file and never
destroys the previous version. :func:`check_writable` runs *before* any expensive work, so a typo in the
output path costs nothing.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from lite3r.errors import OutputError


def check_writable(path: str | os.PathLike, what: str = "output file") -> Path:
    """Raise :class:`OutputError` unless ``path`` can be created or replaced. Creates nothing."""
    path = Path(path).expanduser()
    if path.exists() and path.is_dir():
        raise OutputError(
            f"{path}: is a folder, not a file", f"give a file name for the {what}, e.g. {path / 'scene.ply'}"
        )
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(
            f"{path}: exists and is read-only", "choose another output path or change its permissions"
        )
    parent = _first_existing(path.parent)
    if not parent.is_dir():
        raise OutputError(
            f"{path}: {parent} is a file, not a folder", "choose an output path inside a folder"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(
            f"{path}: cannot write in {parent} (permission denied)", "choose a writable output folder"
        )
    return path


def check_writable_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Like :func:`check_writable`, for a folder that will be created if needed."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: is a file, not a folder", f"give a folder path for the {what}")
    existing = _first_existing(path)
    if not existing.is_dir():
        raise OutputError(f"{path}: {existing} is a file, not a folder", f"give a folder path for the {what}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(
            f"{path}: cannot write in {existing} (permission denied)", "choose a writable folder"
        )
    return path


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once at import: os.umask can only be read by setting it


def _first_existing(p: Path) -> Path:
    p = p.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"{path}: cannot create folder {path.parent} ({exc.strerror})", "choose a writable path"
        ) from exc


def temp_path_for(path: str | os.PathLike) -> Path:
    """A fresh temporary file beside ``path`` (same filesystem, so the final rename is atomic)."""
    path = Path(path)
    _make_parent(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc.strerror})", "choose a writable output path") from exc
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
    return Path(tmp)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", **open_kw) -> Iterator:
    """``with atomic_write(p) as f:`` — ``p`` appears complete when the block ends, or not at all."""
    path = Path(path)
    tmp = temp_path_for(path)
    try:
        with open(tmp, mode, **open_kw) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def commit_all(pairs: list[tuple[Path, Path]]) -> None:
    """Rename several finished temporary files onto their targets (all written before any is renamed)."""
    try:
        for tmp, final in pairs:
            os.replace(tmp, final)
    finally:
        for tmp, _ in pairs:
            Path(tmp).unlink(missing_ok=True)
