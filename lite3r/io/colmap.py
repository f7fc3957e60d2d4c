"""COLMAP text model export: cameras.txt, images.txt, points3D.txt.

- ``cameras.txt``: one PINHOLE camera per image (fx fy cx cy) in the pixels of the image named in
  ``images.txt`` (normally the original photo). COLMAP's pixel convention (the centre of the top-left
  pixel is (0.5, 0.5)) matches the one used by :mod:`lite3r.io.preprocess`.
- ``images.txt``: QW QX QY QZ TX TY TZ of the world→camera transform (scalar-first quaternion, w ≥ 0),
  the camera id and the image name; the 2-D observation line is left empty (no tracks).
- ``points3D.txt``: a random (seeded) subsample of the point cloud with colours, error −1 (unknown)
  and empty tracks. COLMAP, pycolmap and most viewers read such a model.

All three files are written to temporary files first and renamed together at the end.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from lite3r.errors import OutputError
from lite3r.io.atomic import check_writable_dir, commit_all, temp_path_for

DEFAULT_MAX_POINTS = 100_000


def rotation_to_qvec(R: np.ndarray) -> np.ndarray:
    """Rotation matrix [3,3] (or [S,3,3]) → quaternion (w, x, y, z) with w ≥ 0."""
    q = Rotation.from_matrix(np.asarray(R, dtype=np.float64)).as_quat()  # x, y, z, w
    q = np.concatenate([q[..., 3:], q[..., :3]], axis=-1)
    return np.where(q[..., :1] < 0, -q, q)


def qvec_to_rotation(q: np.ndarray) -> np.ndarray:
    q = np.asarray(q, dtype=np.float64)
    return Rotation.from_quat(np.concatenate([q[..., 1:], q[..., :1]], axis=-1)).as_matrix()


def unique_image_names(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Names for images.txt: the file names, or paths relative to the common folder where two photos
    share a file name. Raises :class:`OutputError` for names COLMAP cannot store (whitespace)."""
    names = [Path(p).name for p in paths]
    if len(set(names)) != len(names):
        absolute = [Path(p).absolute() for p in paths]
        common = os.path.commonpath([str(a) for a in absolute])
        names = [a.relative_to(common).as_posix() for a in absolute]
    for p, n in zip(paths, names):
        if not n or any(c.isspace() for c in n):
            raise OutputError(
                f"{p}: COLMAP image names cannot contain spaces",
                "rename the photo (e.g. spaces → _) or skip --colmap",
            )
    return names


def subsample_points(
    xyz: np.ndarray, rgb: np.ndarray, max_points: int | None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    if max_points is None or len(xyz) <= max_points:
        return xyz, rgb
    idx = np.sort(np.random.default_rng(seed).choice(len(xyz), size=max_points, replace=False))
    return xyz[idx], rgb[idx]


def write_colmap_text(
    folder: str | os.PathLike,
    extrinsics: np.ndarray,
    intrinsics: np.ndarray,
    image_sizes: Sequence[tuple[int, int]],
    image_names: Sequence[str],
    points_xyz: np.ndarray | None = None,
    points_rgb: np.ndarray | None = None,
    max_points: int | None = DEFAULT_MAX_POINTS,
    seed: int = 0,
    comment: str | None = None,
) -> Path:
    """Write a COLMAP text model into ``folder`` (created if needed). ``extrinsics`` [S,3,4] world→camera
    (OpenCV), ``intrinsics`` [S,3,3] and ``image_sizes`` (H, W) in the pixels of the named images."""
    folder = check_writable_dir(folder, "COLMAP folder")
    E = np.asarray(extrinsics, dtype=np.float64)
    K = np.asarray(intrinsics, dtype=np.float64)
    S = E.shape[0]
    if not (K.shape[0] == len(image_sizes) == len(image_names) == S):
        raise ValueError("extrinsics, intrinsics, image_sizes and image_names must have one entry per view")
    head = f"# {comment}\n" if comment else ""

    cams = [
        head + "# Camera list with one line of data per camera:\n"
        "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n"
        f"# Number of cameras: {S}\n"
    ]
    for i in range(S):
        H, W = image_sizes[i]
        fx, fy, cx, cy = K[i, 0, 0], K[i, 1, 1], K[i, 0, 2], K[i, 1, 2]
        cams.append(f"{i + 1} PINHOLE {int(W)} {int(H)} {fx:.10g} {fy:.10g} {cx:.10g} {cy:.10g}\n")

    qs = rotation_to_qvec(E[:, :, :3])
    imgs = [
        head + "# Image list with two lines of data per image:\n"
        "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME\n"
        "#   POINTS2D[] as (X, Y, POINT3D_ID)\n"
        f"# Number of images: {S}, mean observations per image: 0\n"
    ]
    for i in range(S):
        q, t = qs[i], E[i, :, 3]
        name = str(image_names[i])
        if not name or any(c.isspace() for c in name):
            raise OutputError(f"COLMAP image names cannot contain spaces: {name!r}", "rename the photo")
        imgs.append(
            f"{i + 1} {q[0]:.12g} {q[1]:.12g} {q[2]:.12g} {q[3]:.12g} {t[0]:.12g} {t[1]:.12g} {t[2]:.12g} {i + 1} {name}\n\n"
        )

    if points_xyz is None:
        xyz, rgb = np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8)
    else:
        rgb_in = np.full((len(points_xyz), 3), 128, np.uint8) if points_rgb is None else points_rgb
        xyz, rgb = subsample_points(np.asarray(points_xyz), np.asarray(rgb_in), max_points, seed)
    pts_head = (
        head + "# 3D point list with one line of data per point:\n"
        "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)\n"
        f"# Number of points: {len(xyz)}, mean track length: 0\n"
    )
    ids = np.arange(1, len(xyz) + 1)
    table = np.column_stack([ids, xyz.astype(np.float64), rgb.astype(np.int64), -np.ones(len(xyz))])

    targets = {n: folder / n for n in ("cameras.txt", "images.txt", "points3D.txt")}
    tmps = {n: temp_path_for(p) for n, p in targets.items()}
    try:
        tmps["cameras.txt"].write_text("".join(cams), encoding="utf-8")
        tmps["images.txt"].write_text("".join(imgs), encoding="utf-8")
        with open(tmps["points3D.txt"], "w", encoding="utf-8") as f:
            f.write(pts_head)
            np.savetxt(f, table, fmt=["%d", "%.7g", "%.7g", "%.7g", "%d", "%d", "%d", "%.1f"])
    except BaseException:
        for t in tmps.values():
            t.unlink(missing_ok=True)
        raise
    commit_all([(tmps[n], targets[n]) for n in targets])
    return folder


def read_colmap_text(folder: str | os.PathLike) -> dict:
    """Read a text model → {"cameras": {id: (model, W, H, params)}, "images": {id: (qvec, tvec,
    camera_id, name)}, "points": (xyz [N,3], rgb [N,3])}. For tests and round trips."""
    folder = Path(folder)
    cameras, images = {}, {}
    for line in (folder / "cameras.txt").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            tok = line.split()
            cameras[int(tok[0])] = (tok[1], int(tok[2]), int(tok[3]), np.array(tok[4:], dtype=np.float64))
    lines = [
        ln for ln in (folder / "images.txt").read_text(encoding="utf-8").split("\n") if not ln.startswith("#")
    ]
    i = 0
    while i < len(lines):
        tok = lines[i].split()
        if not tok:
            i += 1
            continue
        images[int(tok[0])] = (
            np.array(tok[1:5], dtype=np.float64),
            np.array(tok[5:8], dtype=np.float64),
            int(tok[8]),
            tok[9],
        )
        i += 2  # skip the POINTS2D line
    xyz, rgb = [], []
    for line in (folder / "points3D.txt").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            tok = line.split()
            xyz.append([float(v) for v in tok[1:4]])
            rgb.append([int(v) for v in tok[4:7]])
    points = (np.array(xyz, dtype=np.float64).reshape(-1, 3), np.array(rgb, dtype=np.uint8).reshape(-1, 3))
    return {"cameras": cameras, "images": images, "points": points}
