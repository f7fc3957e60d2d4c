"""3D scene construction on any pyvista plotter (Qt-free).

Every function takes a ``pyvista.BasePlotter``: the app passes its ``QtInteractor``, tests pass an
off-screen ``pyvista.Plotter`` and render headless with the same code. Nothing here renders: callers
refresh with ``plotter.update()`` in the app (one render) or ``plotter.render()`` off-screen.

Conventions: cameras are world→camera extrinsics in OpenCV axes (x right, y down, z forward), world =
camera 0, as in :class:`lite3r.engine.Reconstruction`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyvista as pv

CLOUD = "cloud"
CLOUD_LOD = "cloud_lod"
FRUSTA = "frusta"
FRUSTA_FACES = "frusta_faces"
FRUSTUM_COLOR = (0.35, 0.75, 1.0)
HIGHLIGHT_COLOR = (1.0, 0.55, 0.1)
LOD_BUDGET = 300_000  # points shown while dragging on software GL (docs/app.md §3.4: ≥ 10 fps)


@dataclass
class CloudData:
    """The points on screen and where they came from: per-point view index keeps picking honest."""

    xyz: np.ndarray  # [N, 3] float32
    rgb: np.ndarray  # [N, 3] uint8
    conf: np.ndarray  # [N] float32
    total: int  # points before display subsampling

    @property
    def n(self) -> int:
        return int(self.xyz.shape[0])


def filtered_points(recon, source: str = "depth", conf_percentile: float | None = None):
    """``recon.point_cloud`` for what the views show, also for partial results.

    A partial result (cameras only, or some views' depth missing) holds NaN confidences; views without
    any valid point yield an empty cloud instead of a percentile over nothing. The point head is used
    only when the model has one.
    """
    if source == "points" and recon.world_points is None:
        source = "depth"
    conf = recon.world_points_conf if source == "points" else recon.depth_conf
    if conf is None or not np.isfinite(conf).any():
        empty = np.zeros((0, 3), np.float32)
        return empty, np.zeros((0, 3), np.uint8), np.zeros(0, np.float32)
    return recon.point_cloud(source=source, conf_percentile=conf_percentile or None)


def random_subset(n: int, budget: int, seed: int = 0) -> np.ndarray | None:
    """Sorted random indices of at most ``budget`` of ``n`` items, or None when all fit."""
    if n <= budget:
        return None
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=budget, replace=False))


def cloud_polydata(xyz: np.ndarray, rgb: np.ndarray | None = None, scalars: np.ndarray | None = None):
    mesh = pv.PolyData(np.ascontiguousarray(xyz, dtype=np.float32))
    if rgb is not None:
        mesh.point_data["rgb"] = np.ascontiguousarray(rgb, dtype=np.uint8)
    if scalars is not None:
        mesh.point_data["value"] = np.ascontiguousarray(scalars, dtype=np.float32)
    return mesh


def add_point_cloud(
    plotter,
    xyz: np.ndarray,
    rgb: np.ndarray | None = None,
    *,
    scalars: np.ndarray | None = None,
    cmap: str = "turbo",
    clim: tuple[float, float] | None = None,
    scalar_title: str = "",
    point_size: float = 2.0,
    name: str = CLOUD,
):
    """Add (or replace) a point cloud coloured by ``rgb`` (uint8) or by ``scalars`` through ``cmap``.

    Points are drawn as plain GL points (never spheres: 2.5× slower on software GL).
    Returns the actor, or None when there are no points (the old actor is removed).
    """
    if xyz.shape[0] == 0:
        plotter.remove_actor(name, render=False)
        return None
    if scalars is not None:
        mesh = cloud_polydata(xyz, scalars=scalars)
        return plotter.add_mesh(
            mesh,
            scalars="value",
            cmap=cmap,
            clim=clim,
            point_size=point_size,
            style="points",
            render_points_as_spheres=False,
            name=name,
            reset_camera=False,
            render=False,
            show_scalar_bar=bool(scalar_title),
            scalar_bar_args=(
                {
                    "title": scalar_title,
                    "n_labels": 3,
                    "fmt": "%.3g",
                    "vertical": True,
                    "position_x": 0.9,
                    "position_y": 0.25,
                    "height": 0.5,
                    "width": 0.05,
                }
                if scalar_title
                else None
            ),
        )
    mesh = cloud_polydata(xyz, rgb=rgb)
    return plotter.add_mesh(
        mesh,
        scalars="rgb" if rgb is not None else None,
        rgb=rgb is not None,
        point_size=point_size,
        style="points",
        render_points_as_spheres=False,
        name=name,
        reset_camera=False,
        render=False,
        show_scalar_bar=False,
    )


# ---- cameras -------------------------------------------------------------------------------------------


def camera_centers(extrinsics: np.ndarray) -> np.ndarray:
    R, t = extrinsics[:, :, :3], extrinsics[:, :, 3]
    return -np.einsum("sji,sj->si", R, t)


def frustum_size(extrinsics: np.ndarray, xyz: np.ndarray | None = None) -> float:
    """A frustum depth that reads well at the scene's scale.

    A tenth of the median camera-to-point distance when points exist, else a third of the median
    distance between cameras, else 1 (a single camera with no points has no scale).
    """
    centers = camera_centers(extrinsics)
    if xyz is not None and len(xyz):
        sample = xyz[:: max(1, len(xyz) // 20000)]
        d = np.linalg.norm(sample - centers[0], axis=1)
        d = d[np.isfinite(d)]
        if d.size and np.median(d) > 0:
            return float(0.1 * np.median(d))
    if len(centers) > 1:
        gaps = np.linalg.norm(centers[1:] - centers[:-1], axis=1)
        gaps = gaps[np.isfinite(gaps) & (gaps > 0)]
        if gaps.size:
            return float(np.median(gaps) / 3)
    return 1.0


def frustum_geometry(
    extrinsics: np.ndarray, intrinsics: np.ndarray, image_hw: tuple[int, int], size: float
) -> tuple[pv.PolyData, pv.PolyData]:
    """Wireframe frusta (apex, image rectangle and an 'up' tick) and their image-plane quads.

    Both meshes carry cell data ``view`` (the camera index), so a pick on either names the photo.
    """
    h, w = image_hw
    S = extrinsics.shape[0]
    corners_px = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float64)
    points, lines, faces, line_view, face_view = [], [], [], [], []
    for s in range(S):
        R = extrinsics[s, :, :3].astype(np.float64)
        t = extrinsics[s, :, 3].astype(np.float64)
        K = intrinsics[s].astype(np.float64)
        Kinv = np.linalg.inv(K)
        rays = (Kinv @ np.c_[corners_px, np.ones(4)].T).T  # z = 1
        cam_pts = np.vstack([np.zeros(3), rays * size])
        # "up" tick: a small triangle above the top edge (image y points down)
        top_mid = (rays[0] + rays[1]) / 2 * size
        tick_h = 0.15 * np.linalg.norm(rays[1] - rays[0]) * size
        tri = np.array(
            [rays[0] * size * 0.8 + rays[1] * size * 0.2, rays[0] * size * 0.2 + rays[1] * size * 0.8]
        )
        tri = np.vstack([tri, top_mid - np.array([0, tick_h, 0])])
        cam_pts = np.vstack([cam_pts, tri])
        world = (R.T @ (cam_pts - t).T).T
        base = len(points) * 8
        points.append(world)
        a, c = base, base + 1
        segs = [
            (a, c),
            (a, c + 1),
            (a, c + 2),
            (a, c + 3),
            (c, c + 1),
            (c + 1, c + 2),
            (c + 2, c + 3),
            (c + 3, c),
        ]
        segs += [(base + 5, base + 7), (base + 7, base + 6)]
        for i, j in segs:
            lines.extend([2, i, j])
            line_view.append(s)
        faces.extend([4, c, c + 1, c + 2, c + 3])
        face_view.append(s)
    pts = np.vstack(points).astype(np.float32) if points else np.zeros((0, 3), np.float32)
    wire = pv.PolyData(pts, lines=np.array(lines, dtype=np.int64))
    wire.cell_data["view"] = np.array(line_view, dtype=np.int32)
    quads = pv.PolyData(pts, faces=np.array(faces, dtype=np.int64))
    quads.cell_data["view"] = np.array(face_view, dtype=np.int32)
    return wire, quads


def add_cameras(
    plotter,
    extrinsics: np.ndarray,
    intrinsics: np.ndarray,
    image_hw: tuple[int, int],
    size: float,
    highlight: int | None = None,
    line_width: float = 2.0,
):
    """Add (or replace) the frusta; ``highlight`` colours one camera. Returns (wire, faces) actors."""
    wire, quads = frustum_geometry(extrinsics, intrinsics, image_hw, size)
    colors = np.tile(np.array(FRUSTUM_COLOR) * 255, (wire.n_cells, 1)).astype(np.uint8)
    face_colors = np.tile(np.array(FRUSTUM_COLOR) * 255, (quads.n_cells, 1)).astype(np.uint8)
    if highlight is not None:
        colors[wire.cell_data["view"] == highlight] = np.array(HIGHLIGHT_COLOR) * 255
        face_colors[quads.cell_data["view"] == highlight] = np.array(HIGHLIGHT_COLOR) * 255
    wire.cell_data["color"] = colors
    quads.cell_data["color"] = face_colors
    wire_actor = plotter.add_mesh(
        wire,
        scalars="color",
        rgb=True,
        line_width=line_width,
        name=FRUSTA,
        reset_camera=False,
        render=False,
        show_scalar_bar=False,
        pickable=True,
    )
    face_actor = plotter.add_mesh(
        quads,
        scalars="color",
        rgb=True,
        opacity=0.18,
        name=FRUSTA_FACES,
        reset_camera=False,
        render=False,
        show_scalar_bar=False,
        pickable=True,
    )
    return wire_actor, face_actor


def look_from_camera(
    plotter,
    extrinsics: np.ndarray,
    intrinsics: np.ndarray,
    image_hw,
    view: int = 0,
    target_distance: float = 1.0,
) -> None:
    """Put the 3D view's camera at a photo's camera: the 'reset view' a reconstruction user expects."""
    R = extrinsics[view, :, :3].astype(np.float64)
    t = extrinsics[view, :, 3].astype(np.float64)
    center = -R.T @ t
    forward = R.T @ np.array([0.0, 0.0, 1.0])
    up = R.T @ np.array([0.0, -1.0, 0.0])  # OpenCV y points down
    # step back and up a little: this photo's viewpoint, with its own frustum and neighbours in sight
    cam = plotter.camera
    cam.position = tuple(center - 0.35 * target_distance * forward + 0.2 * target_distance * up)
    cam.focal_point = tuple(center + target_distance * forward)
    cam.up = tuple(up)
    h = float(image_hw[0])
    fy = float(intrinsics[view, 1, 1])
    cam.view_angle = float(np.clip(np.degrees(2 * np.arctan(h / (2 * fy))) * 1.15, 20.0, 100.0))
    plotter.reset_camera_clipping_range()


def pick_view(plotter, x: int, y: int, actors) -> int | None:
    """Index of the camera whose frustum is under display pixel (x, y) (VTK origin: bottom left)."""
    from vtkmodules.vtkRenderingCore import vtkCellPicker

    picker = vtkCellPicker()
    picker.SetTolerance(0.006)
    picker.PickFromListOn()
    for actor in actors:
        if actor is not None:
            picker.AddPickList(actor)
    if not picker.Pick(x, y, 0, plotter.renderer):
        return None
    cell = picker.GetCellId()
    data = picker.GetDataSet()
    if cell < 0 or data is None:
        return None
    views = data.GetCellData().GetArray("view")
    return None if views is None else int(views.GetValue(cell))


def world_to_display(plotter, point) -> tuple[float, float]:
    """Display coordinates (VTK, origin bottom left) of a world point, for tests and picking."""
    ren = plotter.renderer
    ren.SetWorldPoint(float(point[0]), float(point[1]), float(point[2]), 1.0)
    ren.WorldToDisplay()
    x, y, _ = ren.GetDisplayPoint()
    return x, y


def distance_colors(d: np.ndarray, vmax: float, cmap: str = "turbo") -> np.ndarray:
    """uint8 colours for distances in [0, vmax] (values above vmax saturate)."""
    from matplotlib import colormaps

    v = np.clip(d / max(vmax, 1e-12), 0, 1)
    return (colormaps[cmap](v)[:, :3] * 255).astype(np.uint8)
