"""Finding photos in folders and checking them without raising (Qt-free).

The image panel must list every file the user dropped and flag the bad ones (truncated, not an image,
unsupported format) instead of failing on the first. The rules are the engine's own
(:mod:`lite3r.io.images`), so a photo flagged here is exactly a photo the engine would refuse:
``scan_photo`` reads only the header (fast, for the list); ``load_thumbnail`` decodes the whole file
(on a worker thread) and so also catches files that are truncated after a valid header.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lite3r.errors import InputError
from lite3r.io import images as io_images


@dataclass
class PhotoEntry:
    """One photo in the project: where it is, its size, and why it cannot be used (if it cannot)."""

    path: Path
    width: int = 0
    height: int = 0
    problem: str | None = None  # one line, without the path (the list shows the name already)
    hint: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def message(self) -> str:
        return "ok" if self.ok else f"{self.problem} (fix: {self.hint})" if self.hint else str(self.problem)


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder`` in natural name order; empty (not an error) if none."""
    try:
        return io_images.list_images(folder)
    except InputError:
        return []


def expand_paths(paths: Iterable[str | os.PathLike]) -> tuple[list[Path], Path | None]:
    """Dropped or chosen paths → photo files, plus the folder they came from (for 'recent folders').

    Folders contribute their images; files are kept even when their extension is not supported, so
    that a wrongly named file is flagged in the list rather than silently ignored.
    """
    photos: list[Path] = []
    folder: Path | None = None
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            photos.extend(list_images(p))
            folder = folder or p
        elif p.is_file():
            photos.append(p)
            folder = folder or p.parent
    seen: set[Path] = set()
    unique = [p for p in photos if not (p in seen or seen.add(p))]
    return unique, folder


def _strip_path(message: str | None, path: Path) -> str | None:
    if message is None:
        return None
    prefix = f"{path}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


def entry_from_check(check: io_images.ImageCheck) -> PhotoEntry:
    h, w = check.size if check.size else (0, 0)
    return PhotoEntry(
        path=check.path, width=w, height=h, problem=_strip_path(check.problem, check.path), hint=check.hint
    )


def scan_photo(path: str | os.PathLike) -> PhotoEntry:
    """Header check only (cheap): size, or a readable reason why the file cannot be a photo."""
    return entry_from_check(io_images.check_image(path, decode=False))


def scan_photos(paths: Iterable[str | os.PathLike]) -> list[PhotoEntry]:
    return [scan_photo(p) for p in paths]


def load_thumbnail(path: str | os.PathLike, size: int = 160) -> tuple[np.ndarray | None, PhotoEntry | None]:
    """Fully decode a photo (engine rules) and shrink it: (uint8 [h, w, 3], None) or (None, problem).

    Never raises for a bad file: the problem comes back as a :class:`PhotoEntry` with ``problem`` set.
    Runs on a worker thread, so the GUI stays responsive with hundreds of photos.
    """
    path = Path(path)
    try:
        im = io_images.open_image(path)
    except InputError as exc:
        return None, PhotoEntry(path=path, problem=_strip_path(exc.message, path), hint=exc.hint)
    except Exception as exc:  # any decoder failure is a property of the file, not a bug of ours
        return None, PhotoEntry(path=path, problem=f"cannot be decoded ({exc})")
    im.thumbnail((size, size))
    return np.asarray(im, dtype=np.uint8).copy(), None
