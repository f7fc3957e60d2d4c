"""PLY point clouds and camera frusta: binary little-endian, float32 xyz, uchar rgb.

Written from a numpy structured array and a hand-written header (10 M points in about a third of a
second, docs/app.md §7), atomically. Optional per-point ``confidence`` (float) and normals (``nx ny nz``);
header ``comment`` lines record the model and precision. :func:`read_ply` reads back what we write (and
any PLY whose elements have scalar properties only), for tests and for reloading exports.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lite3r.io.atomic import atomic_write

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip
_NP_TO_PLY = {
    "i1": "char",
    "u1": "uchar",
    "i2": "short",
    "u2": "ushort",
    "i4": "int",
    "u4": "uint",
    "f4": "float",
    "f8": "double",
}


_ASCII = str.maketrans({"·": "|", "×": "x", "–": "-", "—": "-", "→": "->", "≥": ">=", "≤": "<="})


def _clean_comment(text: str) -> str:
    """One ASCII line (PLY headers are ASCII): common symbols transliterated, the rest dropped."""
    text = unicodedata.normalize("NFKD", str(text).translate(_ASCII))
    return " ".join(text.encode("ascii", errors="ignore").decode().split())


def _header(elements: Sequence[tuple[str, np.ndarray]], comments: Iterable[str]) -> bytes:
    lines = ["ply", "format binary_little_endian 1.0"]
    lines += [f"comment {_clean_comment(c)}" for c in comments]
    for name, arr in elements:
        lines.append(f"element {name} {len(arr)}")
        for prop in arr.dtype.names:
            lines.append(f"property {_NP_TO_PLY[arr.dtype[prop].str[1:]]} {prop}")
    lines.append("end_header")
    return ("\n".join(lines) + "\n").encode("ascii", errors="replace")


def _write_elements(path: str | os.PathLike, elements, comments) -> Path:
    path = Path(path)
    with atomic_write(path, "wb") as f:
        f.write(_header(elements, comments))
        for _, arr in elements:
            f.write(memoryview(np.ascontiguousarray(arr)).cast("B"))
    return path


def write_ply(
    path: str | os.PathLike,
    xyz: np.ndarray,
    rgb: np.ndarray | None = None,
    *,
    confidence: np.ndarray | None = None,
    normals: np.ndarray | None = None,
    comments: Iterable[str] = (),
) -> Path:
    """Write a coloured point cloud. ``xyz`` [N,3] (stored float32), ``rgb`` [N,3] uint8, optional
    ``confidence`` [N] and ``normals`` [N,3] (float32). Atomic; returns the path."""
    xyz = np.asarray(xyz)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"xyz must be [N, 3], got {xyz.shape}")
    n = xyz.shape[0]
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if normals is not None:
        fields += [("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4")]
    if rgb is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    if confidence is not None:
        fields += [("confidence", "<f4")]
    v = np.empty(n, dtype=fields)
    for i, c in enumerate("xyz"):
        v[c] = xyz[:, i]
    if normals is not None:
        normals = _check(normals, n, 3, "normals")
        for i, c in enumerate(("nx", "ny", "nz")):
            v[c] = normals[:, i]
    if rgb is not None:
        rgb = _check(rgb, n, 3, "rgb")
        if rgb.dtype != np.uint8:
            raise ValueError(f"rgb must be uint8, got {rgb.dtype}")
        for i, c in enumerate(("red", "green", "blue")):
            v[c] = rgb[:, i]
    if confidence is not None:
        v["confidence"] = _check(confidence, n, None, "confidence")
    return _write_elements(path, [("vertex", v)], comments)


def _check(a, n, width, name):
    a = np.asarray(a)
    want = (n,) if width is None else (n, width)
    if a.shape != want:
        raise ValueError(f"{name} must have shape {want}, got {a.shape}")
    return a


# ---- camera frusta ----------------------------------------------------------------------------------


def frustum_lines(
    extrinsics: np.ndarray, intrinsics: np.ndarray, image_sizes: Sequence[tuple[int, int]], scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per camera 5 vertices (centre + image corners at depth ``scale``) and 8 edges.

    Returns (vertices [5S, 3] float32, edges [8S, 2] int32). Cameras are world→camera [R | t] (OpenCV);
    ``image_sizes`` are (H, W) in the pixels the intrinsics refer to.
    """
    E = np.asarray(extrinsics, dtype=np.float64)
    K = np.asarray(intrinsics, dtype=np.float64)
    verts, edges = [], []
    for s in range(E.shape[0]):
        R, t = E[s, :, :3], E[s, :, 3]
        H, W = image_sizes[s]
        corners = np.array([[0, 0, 1], [W, 0, 1], [W, H, 1], [0, H, 1]], dtype=np.float64)
        cam = (np.linalg.inv(K[s]) @ corners.T).T * scale  # rays scaled to depth `scale`
        cam = np.vstack([np.zeros(3), cam])
        verts.append((cam - t) @ R)  # X_world = Rᵀ (X_cam − t)
        b = 5 * s
        edges.append(
            [
                [b, b + 1],
                [b, b + 2],
                [b, b + 3],
                [b, b + 4],
                [b + 1, b + 2],
                [b + 2, b + 3],
                [b + 3, b + 4],
                [b + 4, b + 1],
            ]
        )
    return np.concatenate(verts).astype(np.float32), np.asarray(edges, dtype=np.int32).reshape(-1, 2)


def default_frustum_scale(extrinsics: np.ndarray) -> float:
    """A frustum depth that reads well: a quarter of the median nearest-camera distance (0.1 for one camera)."""
    E = np.asarray(extrinsics, dtype=np.float64)
    C = -np.einsum("sji,sj->si", E[:, :, :3], E[:, :, 3])
    if len(C) < 2:
        return 0.1
    d = np.linalg.norm(C[:, None] - C[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    nn = d.min(axis=1)
    nn = nn[np.isfinite(nn) & (nn > 0)]
    return float(0.25 * np.median(nn)) if nn.size else 0.1


def write_frusta_ply(
    path: str | os.PathLike,
    extrinsics: np.ndarray,
    intrinsics: np.ndarray,
    image_sizes: Sequence[tuple[int, int]],
    *,
    scale: float | None = None,
    colors: np.ndarray | Sequence[int] = (255, 64, 0),
    comments: Iterable[str] = (),
) -> Path:
    """Cameras as a PLY of vertices + ``edge`` elements (opens in MeshLab/CloudCompare). Atomic."""
    scale = default_frustum_scale(extrinsics) if scale is None else float(scale)
    verts, edges = frustum_lines(extrinsics, intrinsics, image_sizes, scale)
    S = len(image_sizes)
    col = np.asarray(colors, dtype=np.uint8)
    col = np.broadcast_to(col, (S, 3)) if col.ndim == 1 else col
    v = np.empty(
        len(verts),
        dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")],
    )
    for i, c in enumerate("xyz"):
        v[c] = verts[:, i]
    vcol = np.repeat(col, 5, axis=0)
    for i, c in enumerate(("red", "green", "blue")):
        v[c] = vcol[:, i]
    e = np.empty(
        len(edges),
        dtype=[("vertex1", "<i4"), ("vertex2", "<i4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")],
    )
    e["vertex1"], e["vertex2"] = edges[:, 0], edges[:, 1]
    ecol = np.repeat(col, 8, axis=0)
    for i, c in enumerate(("red", "green", "blue")):
        e[c] = ecol[:, i]
    return _write_elements(path, [("vertex", v), ("edge", e)], [*comments, f"frustum depth {scale:.6g}"])


# ---- reading ---------------------------------------------------------------------------------------


@dataclass
class PlyData:
    elements: dict[str, np.ndarray]  # element name → structured array
    comments: list[str] = field(default_factory=list)

    @property
    def vertex_count(self) -> int:
        return len(self.elements.get("vertex", ()))

    def xyz(self) -> np.ndarray:
        v = self.elements["vertex"]
        return np.stack([v["x"], v["y"], v["z"]], axis=1)

    def rgb(self) -> np.ndarray | None:
        v = self.elements["vertex"]
        if "red" not in v.dtype.names:
            return None
        return np.stack([v["red"], v["green"], v["blue"]], axis=1)


def read_ply(path: str | os.PathLike) -> PlyData:
    """Read a binary PLY with scalar properties (what :func:`write_ply` writes). Raises ValueError
    on ASCII files, list properties or a file shorter than its header promises."""
    path = Path(path)
    with open(path, "rb") as f:
        if f.readline().strip() != b"ply":
            raise ValueError(f"{path}: not a PLY file")
        fmt, comments, elements = None, [], []
        while True:
            line = f.readline()
            if not line:
                raise ValueError(f"{path}: header has no end_header")
            tok = line.decode("ascii", errors="replace").strip().split()
            if not tok:
                continue
            if tok[0] == "end_header":
                break
            if tok[0] == "format":
                fmt = tok[1]
            elif tok[0] == "comment":
                comments.append(" ".join(tok[1:]))
            elif tok[0] == "element":
                elements.append((tok[1], int(tok[2]), []))
            elif tok[0] == "property":
                if tok[1] == "list":
                    raise ValueError(f"{path}: list properties are not supported")
                elements[-1][2].append((tok[2], _PLY_TYPES[tok[1]]))
        if fmt not in ("binary_little_endian", "binary_big_endian"):
            raise ValueError(f"{path}: only binary PLY is supported, got {fmt}")
        order = "<" if fmt == "binary_little_endian" else ">"
        data = f.read()
    out, pos = {}, 0
    for name, count, props in elements:
        dt = np.dtype([(p, order + t) for p, t in props])
        nbytes = dt.itemsize * count
        if pos + nbytes > len(data):
            raise ValueError(f"{path}: truncated ({name}: expected {count} rows)")
        out[name] = np.frombuffer(data, dtype=dt, count=count, offset=pos).copy()
        pos += nbytes
    return PlyData(out, comments)
