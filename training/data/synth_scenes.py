"""Scene and camera sampling for the SynthMV procedural generator.

Random numbers come from a seeded CPU ``torch.Generator`` drawn in blocks and consumed as Python
floats; the small geometry is float64 numpy (a scene is a pure function of its integer seed, and
sampling one costs well under a millisecond of Python rather than thousands of tiny tensor ops).
Rendering lives in ``synth_render``.

World frame: +y is up, the floor / ground is y = 0. Cameras are OpenCV (x right, y down, z forward);
``w2c = [R | t]`` maps world points into camera coordinates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

FAMILIES = ("room", "orbit", "flythrough")
TIERS = ("easy", "medium", "hard", "ood")
OBJECT_KINDS = ("box", "ellipsoid", "cylinder", "cone")
TEXTURE_KINDS = ("constant", "fbm", "worley", "checker", "stripes", "marble")
# Held out of every tier except "ood" (data.md §4: a texture family and a primitive type).
OOD_OBJECT_KINDS = ("cone",)
OOD_TEXTURE_KINDS = ("marble",)

SHELL_NONE, SHELL_BOX, SHELL_SPHERE = 0, 1, 2
TERRAIN_TERMS = 6


@dataclass(frozen=True)
class TierParams:
    """Difficulty knobs of one tier (baselines are multiplied by the family's own scale)."""

    baseline: float  # camera spread relative to the family default
    look_jitter: float  # how far the look-at targets wander (fraction of the viewing distance)
    roll_deg: float
    textureless: float  # fraction of constant-albedo surfaces
    objects: float  # object-count multiplier (occlusion)


TIER_PARAMS = {
    "easy": TierParams(baseline=0.5, look_jitter=0.05, roll_deg=3.0, textureless=0.05, objects=0.7),
    "medium": TierParams(baseline=1.0, look_jitter=0.10, roll_deg=6.0, textureless=0.15, objects=1.0),
    "hard": TierParams(baseline=1.8, look_jitter=0.18, roll_deg=12.0, textureless=0.25, objects=1.4),
    "ood": TierParams(baseline=1.0, look_jitter=0.10, roll_deg=6.0, textureless=0.15, objects=1.0),
}


class Rng:
    """A seeded CPU ``torch.Generator`` read in blocks of uniform float64 numbers."""

    BLOCK = 512

    def __init__(self, seed: int):
        self.gen = torch.Generator(device="cpu")
        self.gen.manual_seed(int(seed) & 0x7FFF_FFFF_FFFF_FFFF)
        self.pool: list[float] = []

    def _u(self) -> float:
        if not self.pool:
            self.pool = torch.rand(self.BLOCK, generator=self.gen, dtype=torch.float64).tolist()[::-1]
        return self.pool.pop()

    def uniform(self, lo: float = 0.0, hi: float = 1.0, size=None):
        if size is None:
            return lo + (hi - lo) * self._u()
        n = int(np.prod(size))
        return lo + (hi - lo) * np.array([self._u() for _ in range(n)]).reshape(size)

    def normal(self, size=None):
        """Standard normal(s) by the Box-Muller transform."""
        n = 1 if size is None else int(np.prod(size))
        out = []
        for _ in range(n):
            u1, u2 = self._u(), self._u()
            out.append(math.sqrt(-2.0 * math.log(1.0 - u1)) * math.cos(2 * math.pi * u2))
        return out[0] if size is None else np.array(out).reshape(size)

    def randint(self, lo: int, hi: int) -> int:
        """Integer in [lo, hi] (inclusive)."""
        return min(hi, lo + int(self._u() * (hi - lo + 1)))

    def choice(self, options, weights=None):
        w = np.ones(len(options)) if weights is None else np.asarray(weights, dtype=np.float64)
        c = np.cumsum(w / w.sum())
        return options[min(len(options) - 1, int(np.searchsorted(c, self._u(), side="right")))]

    def unit(self) -> np.ndarray:
        v = self.normal(3)
        return v / max(np.linalg.norm(v), 1e-12)

    def rotation(self) -> np.ndarray:
        """Uniformly random rotation matrix (from a random unit quaternion)."""
        q = self.normal(4)
        return quat_to_matrix(q / max(np.linalg.norm(q), 1e-12))


def stream_seed(seed: int, stream: int) -> int:
    """Independent 63-bit seed per (scene seed, purpose) pair (splitmix64 finaliser)."""
    x = int(seed) * 0x9E3779B97F4A7C15 + int(stream) * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB
    x &= 0xFFFF_FFFF_FFFF_FFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFF_FFFF_FFFF_FFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFF_FFFF_FFFF_FFFF
    return (x ^ (x >> 31)) & 0x7FFF_FFFF_FFFF_FFFF


def quat_to_matrix(q) -> np.ndarray:
    w, x, y, z = (float(v) for v in q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def axis_rotation(axis: int, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def look_at(eye, target, roll: float = 0.0) -> np.ndarray:
    """World-to-camera [3,4] (OpenCV) for a camera at ``eye`` looking at ``target`` with world +y up."""
    eye, target = np.asarray(eye, dtype=np.float64), np.asarray(target, dtype=np.float64)
    f = target - eye
    f = f / max(np.linalg.norm(f), 1e-12)
    up = np.array([0.0, 1.0, 0.0])
    if abs(float(f @ up)) > 0.995:  # looking straight up/down: any horizontal right vector works
        up = np.array([0.0, 0.0, 1.0])
    r = np.cross(f, up)
    r = r / np.linalg.norm(r)
    d = np.cross(f, r)
    c2w = np.stack([r, d, f], axis=1) @ axis_rotation(2, roll)  # roll about the optical axis
    R = c2w.T
    return np.concatenate([R, (-R @ eye)[:, None]], axis=1)


# --------------------------------------------------------------------------------------------------
# Scene description
# --------------------------------------------------------------------------------------------------


@dataclass
class SceneSpec:
    """A sampled scene: geometry, materials, lighting, appearance and cameras (CPU float32)."""

    seed: int
    family: str
    tier: str
    attempt: int = 0
    # objects (kind index into OBJECT_KINDS, centre, world->local linear map, material)
    obj_kind: list[int] = field(default_factory=list)
    obj_center: list[np.ndarray] = field(default_factory=list)
    obj_rot: list[np.ndarray] = field(default_factory=list)
    obj_scale: list[np.ndarray] = field(default_factory=list)
    obj_mat: list[int] = field(default_factory=list)
    # materials (kind index into TEXTURE_KINDS, 3x3 texture-space map, offset, 3 colours)
    mat_kind: list[int] = field(default_factory=list)
    mat_xform: list[np.ndarray] = field(default_factory=list)
    mat_offset: list[np.ndarray] = field(default_factory=list)
    mat_colors: list[np.ndarray] = field(default_factory=list)
    # enclosing shell: an inverted box (room) or an inverted sphere (orbit background)
    shell_kind: int = SHELL_NONE
    shell_lo: np.ndarray = field(default_factory=lambda: np.zeros(3))  # box min / sphere centre
    shell_hi: np.ndarray = field(default_factory=lambda: np.zeros(3))  # box max / (radius, 0, 0)
    shell_mat: list[int] = field(default_factory=lambda: [0] * 6)  # per face (-x,+x,-y,+y,-z,+z)
    ground_radius: float = 0.0  # disc y = 0; 0 = none
    ground_mat: int = 0
    terrain: np.ndarray | None = None  # [TERRAIN_TERMS, 4]: fx, fz, phase, amplitude
    terrain_mat: int = 0
    fog_far: float = math.inf  # hits beyond this are invalid (sky colour), fading in from 0.6·far
    sky: np.ndarray = field(default_factory=lambda: np.array([[0.55, 0.7, 0.9], [0.85, 0.9, 0.95]]))
    light_dir: np.ndarray = field(default_factory=lambda: np.array([0.3, 0.8, 0.5]))
    ambient: float = 0.4
    shadows: bool = True
    scale: float = 1.0  # typical scene size (for epsilons)
    # cameras

    def add_material(self, kind: int, xform, offset, colors) -> int:
        self.mat_kind.append(kind)
        self.mat_xform.append(np.asarray(xform, dtype=np.float64))
        self.mat_offset.append(np.asarray(offset, dtype=np.float64))
        self.mat_colors.append(np.asarray(colors, dtype=np.float64))
        return len(self.mat_kind) - 1

    def add_object(self, kind: int, center, rot, scale, mat: int):
        self.obj_kind.append(kind)
        self.obj_center.append(np.asarray(center, dtype=np.float64))
        self.obj_rot.append(np.asarray(rot, dtype=np.float64))
        self.obj_scale.append(np.asarray(scale, dtype=np.float64))
        self.obj_mat.append(mat)

    def terrain_height(self, x: float, z: float) -> float:
        if self.terrain is None:
            return 0.0
        t = self.terrain
        return float((t[:, 3] * np.sin(t[:, 0] * x + t[:, 1] * z + t[:, 2])).sum())

    def point_is_free(self, p, margin: float) -> bool:
        """True when ``p`` lies outside every object inflated by ``margin`` (box test in local frame)."""
        for c, r, s in zip(self.obj_center, self.obj_rot, self.obj_scale):
            local = (r.T @ (p - c)) / (s + margin)
            if np.abs(local).max() <= 1.0:
                return False
        return True


# --------------------------------------------------------------------------------------------------
# Materials
# --------------------------------------------------------------------------------------------------


def _palette(rng: Rng) -> np.ndarray:
    """Three albedo colours with a guaranteed luminance contrast between the first two."""
    c0 = rng.uniform(0.05, 0.95, (3,))
    lum0 = float(c0.mean())
    target = lum0 + (0.35 + 0.3 * rng.uniform()) * (-1.0 if lum0 > 0.5 else 1.0)
    c1 = np.clip(rng.uniform(0.0, 1.0, (3,)) * 0.5 + target - 0.25, 0.03, 0.97)
    c2 = rng.uniform(0.05, 0.95, (3,))
    return np.stack([c0, c1, c2])


def sample_material(
    scene: SceneSpec,
    rng: Rng,
    tp: TierParams,
    allow_ood: bool,
    freq_scale: float = 1.0,
    textureless_boost: float = 0.0,
) -> int:
    """Random solid texture; ``freq_scale`` is cycles per world unit at the base frequency."""
    if rng.uniform() < tp.textureless + textureless_boost:
        kind = TEXTURE_KINDS.index("constant")
    else:
        names = ["fbm", "worley", "checker", "stripes"] + (["marble", "marble"] if allow_ood else [])
        weights = [0.4, 0.2, 0.2, 0.2] + ([0.3, 0.3] if allow_ood else [])
        kind = TEXTURE_KINDS.index(rng.choice(names, weights))
    name = TEXTURE_KINDS[kind]
    base = {"constant": 1.0, "fbm": 1.6, "worley": 2.0, "checker": 2.5, "stripes": 2.5, "marble": 1.0}[name]
    freq = base * freq_scale * math.exp(rng.uniform(-0.7, 0.7))
    xform = rng.rotation() * freq
    offset = rng.uniform(-8.0, 8.0, (3,))
    return scene.add_material(kind, xform, offset, _palette(rng))


# --------------------------------------------------------------------------------------------------
# Objects
# --------------------------------------------------------------------------------------------------


def _object_kind(rng: Rng, allow_ood: bool) -> int:
    names = ["box", "ellipsoid", "cylinder"] + (["cone"] if allow_ood else [])
    weights = [0.4, 0.3, 0.3] + ([0.35] if allow_ood else [])
    return OBJECT_KINDS.index(rng.choice(names, weights))


def _upright_rotation(rng: Rng, tilt: float = 0.0) -> np.ndarray:
    yaw = rng.uniform(0.0, 2 * math.pi)
    r = axis_rotation(1, yaw)
    if tilt > 0:
        r = r @ axis_rotation(0, rng.uniform(-tilt, tilt)) @ axis_rotation(2, rng.uniform(-tilt, tilt))
    return r


def _standing_object(
    scene: SceneSpec,
    rng: Rng,
    tp,
    allow_ood,
    x: float,
    z: float,
    size: float,
    floor_y: float,
    freq_scale: float,
):
    kind = _object_kind(rng, allow_ood)
    sx, sy, sz = (size * math.exp(rng.uniform(-0.4, 0.4)) for _ in range(3))
    sy *= math.exp(rng.uniform(-0.2, 0.6))
    if OBJECT_KINDS[kind] in ("cylinder", "cone"):
        sz = sx  # round cross-section
    rot = _upright_rotation(rng, tilt=0.08)
    center = np.array([x, floor_y + sy * 0.97, z])
    mat = sample_material(scene, rng, tp, allow_ood, freq_scale)
    scene.add_object(kind, center, rot, np.array([sx, sy, sz]), mat)


def _free_object(scene: SceneSpec, rng: Rng, tp, allow_ood, center, size: float, freq_scale: float):
    kind = _object_kind(rng, allow_ood)
    s = np.array([size * math.exp(rng.uniform(-0.5, 0.5)) for _ in range(3)])
    mat = sample_material(scene, rng, tp, allow_ood, freq_scale)
    scene.add_object(kind, np.asarray(center, dtype=np.float64), rng.rotation(), s, mat)


# --------------------------------------------------------------------------------------------------
# Families
# --------------------------------------------------------------------------------------------------


def _common_lighting(scene: SceneSpec, rng: Rng):
    elev = rng.uniform(math.radians(30), math.radians(75))
    az = rng.uniform(0.0, 2 * math.pi)
    scene.light_dir = np.array([math.cos(elev) * math.cos(az), math.sin(elev), math.cos(elev) * math.sin(az)])
    scene.ambient = rng.uniform(0.3, 0.6)
    scene.shadows = rng.uniform() < 0.7
    top = rng.uniform(0.45, 0.95, (3,))
    scene.sky = np.stack([top, np.minimum(top + 0.3, 1.0)])


def build_room(scene: SceneSpec, rng: Rng, tp: TierParams, allow_ood: bool):
    w, d, h = rng.uniform(4, 10), rng.uniform(4, 10), rng.uniform(2.5, 4.0)
    scene.scale = max(w, d)
    scene.shell_kind = SHELL_BOX
    scene.shell_lo = np.array([-w / 2, 0.0, -d / 2])
    scene.shell_hi = np.array([w / 2, h, d / 2])
    scene.shell_mat = [sample_material(scene, rng, tp, allow_ood, 0.6) for _ in range(6)]
    n = max(3, round(rng.randint(6, 18) * tp.objects))
    for _ in range(n):
        r = rng.uniform()
        if r < 0.6:  # on the floor
            size = rng.uniform(0.2, 0.7)
            x, z = rng.uniform(-w / 2 + 0.3, w / 2 - 0.3), rng.uniform(-d / 2 + 0.3, d / 2 - 0.3)
            _standing_object(scene, rng, tp, allow_ood, x, z, size, 0.0, 1.2)
        elif r < 0.8:  # floating
            size = rng.uniform(0.15, 0.5)
            c = [
                rng.uniform(-w / 2 + 0.5, w / 2 - 0.5),
                rng.uniform(0.6, h - 0.4),
                rng.uniform(-d / 2 + 0.5, d / 2 - 0.5),
            ]
            _free_object(scene, rng, tp, allow_ood, c, size, 1.2)
        else:  # flat panel / shelf on a wall
            axis = rng.randint(0, 1) * 2  # x or z wall
            side = rng.choice([-1.0, 1.0])
            half = (w if axis == 0 else d) / 2
            other = (d if axis == 0 else w) / 2
            c = [0.0, rng.uniform(0.5, h - 0.5), 0.0]
            c[axis] = side * half
            c[2 - axis] = rng.uniform(-other + 0.6, other - 0.6)
            s = [0.0, rng.uniform(0.15, 0.6), 0.0]
            s[axis] = rng.uniform(0.05, 0.25)
            s[2 - axis] = rng.uniform(0.3, 1.0)
            kind = OBJECT_KINDS.index(rng.choice(["box", "ellipsoid"], [0.7, 0.3]))
            mat = sample_material(scene, rng, tp, allow_ood, 1.5)
            scene.add_object(kind, np.array(c), np.eye(3), np.array(s), mat)


def build_orbit(scene: SceneSpec, rng: Rng, tp: TierParams, allow_ood: bool):
    scene.scale = 5.0
    scene.ground_radius = rng.uniform(7.0, 10.0)
    scene.ground_mat = sample_material(scene, rng, tp, allow_ood, 0.8, textureless_boost=-0.5)
    if rng.uniform() < 0.5:  # textured far sphere (valid depth) instead of an invalid sky
        scene.shell_kind = SHELL_SPHERE
        scene.shell_lo = np.array([rng.uniform(-2, 2), 0.0, rng.uniform(-2, 2)])
        scene.shell_hi = np.array([rng.uniform(12.5, 20.0), 0.0, 0.0])
        scene.shell_mat = [sample_material(scene, rng, tp, allow_ood, 0.25, textureless_boost=-0.5)] * 6
    clusters = rng.randint(1, 4)
    for _ in range(clusters):
        cx, cz = rng.uniform(-0.9, 0.9), rng.uniform(-0.9, 0.9)
        count = max(1, round(rng.randint(1, 4) * tp.objects))
        for _ in range(count):
            x, z = cx + rng.uniform(-0.4, 0.4), cz + rng.uniform(-0.4, 0.4)
            size = rng.uniform(0.15, 0.45)
            if rng.uniform() < 0.75:
                _standing_object(scene, rng, tp, allow_ood, x, z, size, 0.0, 2.5)
            else:
                _free_object(scene, rng, tp, allow_ood, [x, rng.uniform(0.4, 1.3), z], size, 2.5)


def build_flythrough(scene: SceneSpec, rng: Rng, tp: TierParams, allow_ood: bool):
    scene.scale = 10.0
    lam_max = rng.uniform(20.0, 40.0)
    amp = rng.uniform(0.8, 2.2)
    rows = []
    for k in range(TERRAIN_TERMS):
        lam = lam_max * 0.6**k * math.exp(rng.uniform(-0.15, 0.15))
        ang = rng.uniform(0.0, 2 * math.pi)
        f = 2 * math.pi / lam
        rows.append([f * math.cos(ang), f * math.sin(ang), rng.uniform(0, 2 * math.pi), amp * 0.5**k])
    scene.terrain = np.array(rows)
    scene.terrain_mat = sample_material(scene, rng, tp, allow_ood, 1.0, textureless_boost=-1.0)
    scene.fog_far = rng.uniform(35.0, 50.0)
    n = max(4, round(rng.randint(8, 20) * tp.objects))
    for _ in range(n):
        fwd, lat = rng.uniform(-4.0, 32.0), rng.uniform(-8.0, 8.0)
        size = rng.uniform(0.3, 1.3)
        clear = 2.5 * size + 1.5
        if abs(lat) < clear and fwd < 14.0:
            lat = math.copysign(clear + abs(lat), lat)  # keep the start of the flight corridor open
        y0 = scene.terrain_height(fwd, lat)
        _standing_object(scene, rng, tp, allow_ood, fwd, lat, size, y0 - 0.3 * size, 1.0)


BUILDERS = {"room": build_room, "orbit": build_orbit, "flythrough": build_flythrough}


# --------------------------------------------------------------------------------------------------
# Cameras
# --------------------------------------------------------------------------------------------------


class CameraSampler:
    """Samples view 0 and then other views around it; ``spread`` < 1 shrinks baselines on re-tries."""

    def __init__(self, scene: SceneSpec, rng: Rng, tp: TierParams):
        self.scene, self.rng, self.tp = scene, rng, tp
        fam = scene.family
        lo, hi = {"room": (50, 90), "orbit": (30, 60), "flythrough": (50, 85)}[fam]
        self.fov0 = math.radians(rng.uniform(lo, hi))
        self.per_view_fov = rng.uniform() < 0.3
        self.anchor: dict = {}

    def _fov(self, first: bool) -> float:
        if first or not self.per_view_fov:
            return self.fov0
        return self.fov0 * math.exp(self.rng.uniform(-0.08, 0.08))

    def _roll(self, spread: float) -> float:
        return math.radians(self.rng.uniform(-1, 1) * self.tp.roll_deg * max(spread, 0.3))

    # -- room -------------------------------------------------------------------------------------
    def _room_position(self, lo, hi, center=None, radius=0.0):
        s = self.scene
        for _ in range(64):
            if center is None:
                p = np.array(
                    [
                        self.rng.uniform(float(lo[0]) + 0.6, float(hi[0]) - 0.6),
                        self.rng.uniform(0.8, min(2.0, float(hi[1]) - 0.4)),
                        self.rng.uniform(float(lo[2]) + 0.6, float(hi[2]) - 0.6),
                    ]
                )
            else:
                dirn = self.rng.unit()
                dirn[1] *= 0.3
                p = center + dirn / np.linalg.norm(dirn) * radius * self.rng.uniform(0.4, 1.0)
                p = np.maximum(np.minimum(p, hi - 0.3), lo + 0.3)
                p[1] = min(max(float(p[1]), 0.4), float(hi[1]) - 0.3)
            if s.point_is_free(p, 0.25):
                return p
        return None

    def _room_target(self, eye):
        s = self.scene
        lo, hi = s.shell_lo, s.shell_hi
        for _ in range(32):
            if s.obj_center and self.rng.uniform() < 0.65:
                tgt = s.obj_center[self.rng.randint(0, len(s.obj_center) - 1)].copy()
            else:
                tgt = np.array([self.rng.uniform(float(lo[i]), float(hi[i])) for i in range(3)])
                tgt[1] = self.rng.uniform(0.3, float(hi[1]) - 0.3)
            if np.linalg.norm(tgt - eye) > 1.5:
                return tgt
        return tgt

    def room(self, i: int, spread: float):
        s = self.scene
        lo, hi = s.shell_lo, s.shell_hi
        if i == 0:
            eye = self._room_position(lo, hi)
            if eye is None:
                return None
            tgt = self._room_target(eye)
            self.anchor = {"eye": eye, "target": tgt}
            return look_at(eye, tgt, self._roll(1.0)), self._fov(True)
        eye0, tgt0 = self.anchor["eye"], self.anchor["target"]
        baseline = 0.9 * self.tp.baseline * spread
        eye = self._room_position(lo, hi, eye0, baseline)
        if eye is None:
            return None
        dist = float(np.linalg.norm(tgt0 - eye0))
        tgt = tgt0 + self.rng.normal(3) * self.tp.look_jitter * dist * spread
        return look_at(eye, tgt, self._roll(spread)), self._fov(False)

    # -- orbit ------------------------------------------------------------------------------------
    def _orbit_pose(self, radius, elev, az, tgt, roll):
        eye = radius * np.array(
            [math.cos(elev) * math.cos(az), math.sin(elev), math.cos(elev) * math.sin(az)]
        )
        return look_at(eye, tgt, roll)

    def orbit(self, i: int, spread: float):
        if i == 0:  # frame the object cluster (radius ~1.5) whatever the field of view
            radius = self.rng.uniform(1.4, 2.6) / math.tan(self.fov0 / 2)
            elev = math.radians(self.rng.uniform(5.0, 60.0))
            az = self.rng.uniform(0.0, 2 * math.pi)
            tgt = np.array([0.0, self.rng.uniform(0.2, 0.7), 0.0])
            tgt += self.rng.normal(3) * 0.15
            self.anchor = {"radius": radius, "elev": elev, "az": az, "target": tgt}
            return self._orbit_pose(radius, elev, az, tgt, self._roll(1.0)), self._fov(True)
        a = self.anchor
        az_spread = math.radians(min(120.0, 60.0 * self.tp.baseline)) * spread
        az = a["az"] + self.rng.uniform(-0.5, 0.5) * az_spread
        elev = a["elev"] + math.radians(self.rng.uniform(-1, 1) * 15.0 * self.tp.baseline * spread)
        elev = min(max(elev, math.radians(5.0)), math.radians(70.0))
        radius = a["radius"] * math.exp(self.rng.uniform(-1, 1) * 0.12 * self.tp.baseline * spread)
        tgt = a["target"] + self.rng.normal(3) * self.tp.look_jitter * a["radius"] * spread
        return self._orbit_pose(radius, elev, az, tgt, self._roll(spread)), self._fov(False)

    # -- fly-through ------------------------------------------------------------------------------
    def flythrough(self, i: int, spread: float):
        s = self.scene
        if i == 0:
            self.anchor = {
                "yaw": self.rng.uniform(-0.25, 0.25),
                "pitch": math.radians(self.rng.uniform(8, 25)),
                "clear": self.rng.uniform(1.0, 2.5),
                "step": self.rng.uniform(0.25, 0.5),
            }
        a = self.anchor
        for _ in range(32):
            along = 0.0 if i == 0 else self.rng.uniform(-0.3, 1.0) * a["step"] * 7 * self.tp.baseline * spread
            lateral = 0.0 if i == 0 else self.rng.normal() * 0.25 * self.tp.baseline * spread
            x = along * math.cos(a["yaw"]) - lateral * math.sin(a["yaw"])
            z = along * math.sin(a["yaw"]) + lateral * math.cos(a["yaw"])
            y = s.terrain_height(x, z) + a["clear"] * math.exp(self.rng.uniform(-0.15, 0.15) * (i > 0))
            # look over the next hill rather than into it
            ahead = [
                s.terrain_height(x + r * math.cos(a["yaw"]), z + r * math.sin(a["yaw"])) for r in (2, 4, 6, 9)
            ]
            y = max(y, max(ahead) + 0.6)
            eye = np.array([x, y, z])
            if s.point_is_free(eye, 0.4):
                break
        else:
            return None
        jit = 0.0 if i == 0 else spread
        yaw = a["yaw"] + math.radians(self.rng.uniform(-1, 1) * 10.0 * self.tp.baseline * jit)
        pitch = a["pitch"] + math.radians(self.rng.uniform(-1, 1) * 5.0 * self.tp.baseline * jit)
        fwd = np.array([math.cos(pitch) * math.cos(yaw), -math.sin(pitch), math.cos(pitch) * math.sin(yaw)])
        return look_at(eye, eye + fwd, self._roll(spread if i else 1.0)), self._fov(i == 0)

    def sample(self, i: int, spread: float):
        return getattr(self, self.scene.family)(i, spread)


def sample_photometric(rng: Rng, num_views: int) -> np.ndarray:
    rows = []
    for _ in range(num_views):
        gain = math.exp(rng.uniform(-0.25, 0.2))
        wb = [math.exp(rng.uniform(-0.06, 0.06)) for _ in range(3)]
        gamma = math.exp(rng.uniform(-0.12, 0.12))
        sigma = rng.uniform(0.0, 0.015)
        rows.append([gain, *wb, gamma, sigma, float(rng.randint(0, 2**31 - 2))])
    return np.array(rows)


def sample_scene(seed: int, family: str, tier: str, attempt: int = 0) -> tuple[SceneSpec, CameraSampler]:
    """Geometry, materials and lighting of one scene, plus its camera sampler (cameras not yet drawn)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown scene family {family!r}; expected one of {FAMILIES}")
    if tier not in TIERS:
        raise ValueError(f"unknown tier {tier!r}; expected one of {TIERS}")
    rng = Rng(stream_seed(seed, 1 + 16 * attempt))
    tp = TIER_PARAMS[tier]
    scene = SceneSpec(seed=seed, family=family, tier=tier, attempt=attempt)
    _common_lighting(scene, rng)
    BUILDERS[family](scene, rng, tp, tier == "ood")
    cam_rng = Rng(stream_seed(seed, 2 + 16 * attempt))
    return scene, CameraSampler(scene, cam_rng, tp)
