"""MVSNet-family file formats: ``*_cam.txt``, ``pair.txt`` and PFM depth maps (data.md §1.1–1.3).

Shared by DTU (all MVSNet layouts), DTU64 and BlendedMVS. Parsers are token-based, so the exact line
breaks and blank lines of a file do not matter; every malformed file raises :class:`InputError`
naming the file and what was expected. Writers exist so tests (and users converting their own data)
can produce files in the real on-disk formats; they write atomically.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lite3r.errors import InputError

__all__ = [
    "DEFAULT_NUM_PLANES",
    "MVSCamera",
    "read_cam_file",
    "read_pair_file",
    "read_pfm",
    "write_cam_file",
    "write_pair_file",
    "write_pfm",
]

DEFAULT_NUM_PLANES = 192  # MVSNet's DTU training plane count; VGGT's parser assumes the same


@dataclass(frozen=True)
class MVSCamera:
    extrinsic: np.ndarray  # [4, 4] world→camera, OpenCV
    intrinsic: np.ndarray  # [3, 3] pixels of the resolution the file was written for
    depth_min: float | None = None
    depth_interval: float | None = None
    depth_num: int | None = None
    depth_max: float | None = None
    depth_num_declared: bool = False  # False: the plane count was not in the file (default used)

    @property
    def extrinsic_3x4(self) -> np.ndarray:
        return self.extrinsic[:3, :]


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="strict")
    except FileNotFoundError:
        raise InputError(f"missing {what}: {path}", "check the dataset root and layout") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {what} {path}: {exc}") from None


# ---- *_cam.txt ---------------------------------------------------------------------------------------


def read_cam_file(path: str | os.PathLike, num_planes: int = DEFAULT_NUM_PLANES) -> MVSCamera:
    """Parse an MVSNet camera file.

    Tokens: ``extrinsic`` + 16 numbers (4×4 world→camera, row-major), ``intrinsic`` + 9 numbers (K), then
    the depth line: nothing, ``DEPTH_MIN DEPTH_INTERVAL`` (depth_max = min + interval × (num_planes − 1)
    for the declared ``num_planes``), ``… DEPTH_NUM`` (max from the file's plane count) or ``… DEPTH_NUM
    DEPTH_MAX`` (the **fourth** number is the maximum depth; BlendedMVS).
    """
    path = Path(path)
    tokens = _read_text(path, "camera file").split()
    expect = "'extrinsic' + 16 numbers, 'intrinsic' + 9 numbers, then 0, 2, 3 or 4 depth numbers"
    if len(tokens) < 27 or tokens[0].lower() != "extrinsic" or tokens[17].lower() != "intrinsic":
        raise InputError(f"malformed camera file {path}", f"expected MVSNet format: {expect}")
    try:
        extr = np.array([float(x) for x in tokens[1:17]], dtype=np.float64).reshape(4, 4)
        intr = np.array([float(x) for x in tokens[18:27]], dtype=np.float64).reshape(3, 3)
        depth = [float(x) for x in tokens[27:]]
    except ValueError:
        raise InputError(f"non-numeric value in camera file {path}", f"expected {expect}") from None
    if not (np.isfinite(extr).all() and np.isfinite(intr).all()):
        raise InputError(f"non-finite camera matrix in {path}")
    n = len(depth)
    if n == 0:
        return MVSCamera(extr, intr)
    if n == 1 or n > 4:
        raise InputError(f"camera file {path} has {n} depth numbers", f"expected {expect}")
    dmin, dint = depth[0], depth[1]
    if n == 2:
        return MVSCamera(extr, intr, dmin, dint, num_planes, dmin + dint * (num_planes - 1), False)
    dnum = round(depth[2])
    dmax = depth[3] if n == 4 else dmin + dint * (dnum - 1)
    return MVSCamera(extr, intr, dmin, dint, dnum, dmax, True)


def write_cam_file(
    path: str | os.PathLike,
    extrinsic: np.ndarray,
    intrinsic: np.ndarray,
    depth: tuple[float, ...] = (),
) -> Path:
    """Write an MVSNet camera file (``depth`` = 0, 2, 3 or 4 numbers for line 11)."""
    E = np.asarray(extrinsic, dtype=np.float64)
    if E.shape == (3, 4):
        E = np.vstack([E, [0, 0, 0, 1]])
    K = np.asarray(intrinsic, dtype=np.float64)
    lines = ["extrinsic"]
    lines += [" ".join(repr(float(v)) for v in row) for row in E]
    lines += ["", "intrinsic"]
    lines += [" ".join(repr(float(v)) for v in row) for row in K]
    lines += ["", " ".join(repr(float(v)) for v in depth)]
    path = Path(path)
    _atomic_write(path, ("\n".join(lines) + "\n").encode())
    return path


# ---- pair.txt ----------------------------------------------------------------------------------------


def read_pair_file(path: str | os.PathLike) -> dict[int, list[tuple[int, float]]]:
    """``pair.txt`` → {reference view: [(source view, score), …]} in file order (M may be < 10)."""
    path = Path(path)
    tokens = _read_text(path, "pair file").split()
    expect = "N, then per view: ref id, M, and M (source id, score) pairs"
    try:
        n = int(tokens[0])
        pos = 1
        out: dict[int, list[tuple[int, float]]] = {}
        for _ in range(n):
            ref = int(tokens[pos])
            m = int(tokens[pos + 1])
            pos += 2
            srcs = [(int(tokens[pos + 2 * k]), float(tokens[pos + 2 * k + 1])) for k in range(m)]
            pos += 2 * m
            out[ref] = srcs
    except (IndexError, ValueError):
        raise InputError(f"malformed pair file {path}", f"expected {expect}") from None
    if pos != len(tokens):
        raise InputError(f"pair file {path} has {len(tokens) - pos} trailing tokens", f"expected {expect}")
    return out


def write_pair_file(path: str | os.PathLike, pairs: dict[int, list[tuple[int, float]]]) -> Path:
    lines = [str(len(pairs))]
    for ref, srcs in pairs.items():
        lines.append(str(ref))
        lines.append(" ".join([str(len(srcs))] + [f"{s} {score:g}" for s, score in srcs]))
    path = Path(path)
    _atomic_write(path, ("\n".join(lines) + "\n").encode())
    return path


# ---- PFM ---------------------------------------------------------------------------------------------


def _read_header_line(f, path: Path) -> str:
    line = f.readline()
    if not line:
        raise InputError(f"truncated PFM header in {path}")
    try:
        return line.decode("ascii").strip()
    except UnicodeDecodeError:
        raise InputError(f"not a PFM file: {path}", "expected a 'Pf' or 'PF' header") from None


def read_pfm(path: str | os.PathLike) -> np.ndarray:
    """PFM → float32 array [H, W] (``Pf``) or [H, W, 3] (``PF``), top row first.

    The scale line's sign gives the byte order (negative: little-endian); rows are stored bottom to top
    and are flipped here.
    """
    path = Path(path)
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise InputError(f"missing depth map: {path}", "check the dataset root and layout") from None
    with f:
        header = _read_header_line(f, path)
        if header not in ("Pf", "PF"):
            raise InputError(
                f"not a PFM file: {path}", f"expected a 'Pf' or 'PF' header, found {header[:10]!r}"
            )
        channels = 3 if header == "PF" else 1
        dims = _read_header_line(f, path)
        m = re.fullmatch(r"(\d+)\s+(\d+)", dims)
        if not m:
            raise InputError(f"bad PFM size line {dims!r} in {path}", "expected 'WIDTH HEIGHT'")
        w, h = int(m.group(1)), int(m.group(2))
        try:
            scale = float(_read_header_line(f, path))
        except ValueError:
            raise InputError(f"bad PFM scale line in {path}") from None
        endian = "<" if scale < 0 else ">"
        count = w * h * channels
        data = np.frombuffer(f.read(), dtype=endian + "f4")
    if data.size < count:
        raise InputError(f"truncated PFM {path}: {data.size} of {count} floats")
    data = data[:count].reshape((h, w, channels) if channels == 3 else (h, w))
    return np.ascontiguousarray(np.flipud(data).astype(np.float32))


def write_pfm(path: str | os.PathLike, image: np.ndarray, little_endian: bool = True) -> Path:
    """Write [H, W] or [H, W, 3] float data as PFM (rows bottom to top, scale ∓1 for the byte order)."""
    a = np.asarray(image, dtype=np.float32)
    if a.ndim == 3 and a.shape[2] == 3:
        header = "PF"
    elif a.ndim == 2:
        header = "Pf"
    else:
        raise ValueError(f"PFM holds [H, W] or [H, W, 3] data, got {a.shape}")
    h, w = a.shape[:2]
    body = np.flipud(a).astype("<f4" if little_endian else ">f4").tobytes()
    scale = "-1.0" if little_endian else "1.0"
    path = Path(path)
    _atomic_write(path, f"{header}\n{w} {h}\n{scale}\n".encode() + body)
    return path
