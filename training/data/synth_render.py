"""Analytic ray casting of SynthMV scenes in plain PyTorch (CPU or GPU, fp32, no atomics).

Rays are laid out as ``[E, N]``: E entries (one (scene, view) pair each) by N rays. Per-entry scene
parameters broadcast as ``[E, 1]`` columns, so the same code renders a batch of scenes on the GPU
("dense" mode: every ray is tested against every primitive, no host syncs inside the loops). When all
entries belong to one scene ("single" mode, used on the CPU), parameters are scalars and rays are
culled against bounding spheres first, which skips most of the work for small objects.

All arithmetic is element-wise or a reduction over a small trailing axis, so a ray's result depends
only on that ray: chunking, culling and batching do not change any bit of the output.
Vectors are tuples of three tensors (structure of arrays).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .synth_scenes import OBJECT_KINDS, SHELL_BOX, SHELL_SPHERE, TERRAIN_TERMS, TEXTURE_KINDS, SceneSpec

INF = math.inf
EPS_T = 1e-4  # minimum ray parameter (scene units; rays are z-normalised, so t is the z-depth)
HIT_MISS = -1
# hit ids: object slot g in [0, n_slots); then n_slots + (0..5 shell faces, 6 ground, 7 terrain)
HIT_GROUND, HIT_TERRAIN = 6, 7

Vec = tuple[Tensor, Tensor, Tensor]


# --------------------------------------------------------------------------------------------------
# Packing scenes into padded device tensors
# --------------------------------------------------------------------------------------------------


@dataclass
class PackedScenes:
    """B scenes as padded tensors. Object slots are grouped by kind (``groups``: kind, first slot, count)."""

    groups: list[tuple[int, int, int]]
    n_slots: int
    obj: Tensor  # [B, n_slots, 16]: centre (3), world->local 3x3 (9, row-major), scale (3), bound radius
    obj_valid: Tensor  # [B, n_slots] bool
    obj_mat: Tensor  # [B, n_slots] long
    shell_kind: Tensor  # [B] long
    shell_lo: Tensor  # [B, 3]
    shell_hi: Tensor  # [B, 3]
    shell_mat: Tensor  # [B, 6] long
    ground_radius: Tensor  # [B]
    ground_mat: Tensor  # [B] long
    terrain: Tensor  # [B, TERRAIN_TERMS, 4]
    has_terrain: Tensor  # [B] bool
    terrain_mat: Tensor  # [B] long
    fog_far: Tensor  # [B]
    sky: Tensor  # [B, 2, 3]
    light: Tensor  # [B, 3] unit, towards the light
    ambient: Tensor  # [B]
    shadows: Tensor  # [B] bool
    scale: Tensor  # [B]
    n_mats: int
    mat_kind: Tensor  # [B*n_mats] long
    mat_param: Tensor  # [B*n_mats, 21]: texture map 3x3 (9), offset (3), colours 3x3 (9)
    shell_any: bool
    ground_any: bool
    terrain_any: bool
    shadows_any: bool
    batch: int


def pack_scenes(specs: list[SceneSpec], device) -> PackedScenes:
    B = len(specs)
    counts = {k: max(sum(1 for x in s.obj_kind if x == k) for s in specs) for k in range(len(OBJECT_KINDS))}
    groups, start = [], 0
    for k in range(len(OBJECT_KINDS)):
        if counts[k]:
            groups.append((k, start, counts[k]))
            start += counts[k]
    n_slots = start
    P = max(n_slots, 1)
    obj = np.zeros((B, P, 16))
    obj[..., 3:12] = np.eye(3).reshape(9)
    obj[..., 12:15] = 1.0
    obj_valid = np.zeros((B, P), dtype=bool)
    obj_mat = np.zeros((B, P), dtype=np.int64)
    for b, s in enumerate(specs):
        fill = {k: first for k, first, _ in groups}
        for kind, c, r, sc, m in zip(s.obj_kind, s.obj_center, s.obj_rot, s.obj_scale, s.obj_mat):
            slot = fill[kind]
            fill[kind] += 1
            obj[b, slot, 0:3] = c
            obj[b, slot, 3:12] = (r.T / sc[:, None]).reshape(9)  # world -> local: diag(1/s) R^T
            obj[b, slot, 12:15] = sc
            obj[b, slot, 15] = float(np.linalg.norm(sc)) * 1.01 + 1e-4  # bounding sphere (conservative)
            obj_valid[b, slot] = True
            obj_mat[b, slot] = m
    n_mats = max(len(s.mat_kind) for s in specs)
    mat_kind = np.zeros((B, n_mats), dtype=np.int64)
    mat_param = np.zeros((B, n_mats, 21))
    for b, s in enumerate(specs):
        for m in range(len(s.mat_kind)):
            mat_kind[b, m] = s.mat_kind[m]
            mat_param[b, m, 0:9] = s.mat_xform[m].reshape(9)
            mat_param[b, m, 9:12] = s.mat_offset[m]
            mat_param[b, m, 12:21] = s.mat_colors[m].reshape(9)
    terrain = np.zeros((B, TERRAIN_TERMS, 4))
    for b, s in enumerate(specs):
        if s.terrain is not None:
            terrain[b] = s.terrain
    f32 = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float64)).float()
    i64 = lambda a: torch.from_numpy(np.asarray(a, dtype=np.int64))
    light = np.stack([s.light_dir / np.linalg.norm(s.light_dir) for s in specs])
    ps = PackedScenes(
        groups=groups,
        n_slots=n_slots,
        obj=f32(obj),
        obj_valid=torch.from_numpy(obj_valid),
        obj_mat=i64(obj_mat),
        shell_kind=i64([s.shell_kind for s in specs]),
        shell_lo=f32([s.shell_lo for s in specs]),
        shell_hi=f32([s.shell_hi for s in specs]),
        shell_mat=i64([s.shell_mat for s in specs]),
        ground_radius=f32([s.ground_radius for s in specs]),
        ground_mat=i64([s.ground_mat for s in specs]),
        terrain=f32(terrain),
        has_terrain=torch.tensor([s.terrain is not None for s in specs]),
        terrain_mat=i64([s.terrain_mat for s in specs]),
        fog_far=f32([s.fog_far for s in specs]),
        sky=f32([s.sky for s in specs]),
        light=f32(light),
        ambient=f32([s.ambient for s in specs]),
        shadows=torch.tensor([bool(s.shadows) for s in specs]),
        scale=f32([s.scale for s in specs]),
        n_mats=n_mats,
        mat_kind=i64(mat_kind.reshape(-1)),
        mat_param=f32(mat_param.reshape(-1, 21)),
        shell_any=any(s.shell_kind != 0 for s in specs),
        ground_any=any(s.ground_radius > 0 for s in specs),
        terrain_any=any(s.terrain is not None for s in specs),
        shadows_any=any(s.shadows for s in specs),
        batch=B,
    )
    for name, val in vars(ps).items():
        if isinstance(val, Tensor):
            setattr(ps, name, val.to(device))
    return ps


# --------------------------------------------------------------------------------------------------
# Small vector helpers (element-wise only)
# --------------------------------------------------------------------------------------------------


def _apply3(m, v: Vec) -> Vec:
    """Row-major 3x3 (nine broadcastable tensors) times a vector."""
    return (
        m[0] * v[0] + m[1] * v[1] + m[2] * v[2],
        m[3] * v[0] + m[4] * v[1] + m[5] * v[2],
        m[6] * v[0] + m[7] * v[1] + m[8] * v[2],
    )


def _apply3t(m, v: Vec) -> Vec:
    """Transpose of a row-major 3x3 times a vector."""
    return (
        m[0] * v[0] + m[3] * v[1] + m[6] * v[2],
        m[1] * v[0] + m[4] * v[1] + m[7] * v[2],
        m[2] * v[0] + m[5] * v[1] + m[8] * v[2],
    )


def _dot(a: Vec, b: Vec) -> Tensor:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _normalize(v: Vec) -> Vec:
    n = torch.rsqrt((v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).clamp_min(1e-30))
    return (v[0] * n, v[1] * n, v[2] * n)


def _take(v: Vec, idx) -> Vec:
    return (v[0][idx], v[1][idx], v[2][idx])


def _where(c: Tensor, a, b) -> Tensor:
    return torch.where(c, a, b)


# --------------------------------------------------------------------------------------------------
# Canonical shapes in local coordinates (o, d already transformed). Return t (inf = miss).
# --------------------------------------------------------------------------------------------------


def _hit_box(o: Vec, d: Vec) -> Tensor:
    tn = tf = None
    for k in range(3):
        inv = 1.0 / d[k]
        t1 = (-1.0 - o[k]) * inv
        t2 = (1.0 - o[k]) * inv
        lo, hi = torch.minimum(t1, t2), torch.maximum(t1, t2)
        tn = lo if tn is None else torch.maximum(tn, lo)
        tf = hi if tf is None else torch.minimum(tf, hi)
    return _where((tn <= tf) & (tn > EPS_T), tn, INF)


def _hit_ellipsoid(o: Vec, d: Vec) -> Tensor:
    a = _dot(d, d)
    b = _dot(o, d)
    c = _dot(o, o) - 1.0
    disc = b * b - a * c
    t = (-b - torch.sqrt(disc.clamp_min(0.0))) / a
    return _where((disc >= 0) & (t > EPS_T), t, INF)


def _hit_cylinder(o: Vec, d: Vec) -> Tensor:
    a = d[0] * d[0] + d[2] * d[2]
    b = o[0] * d[0] + o[2] * d[2]
    c = o[0] * o[0] + o[2] * o[2] - 1.0
    disc = b * b - a * c
    ts = (-b - torch.sqrt(disc.clamp_min(0.0))) / a
    ys = o[1] + ts * d[1]
    side = _where((disc >= 0) & (ts > EPS_T) & (ys.abs() <= 1.0), ts, INF)
    inv = 1.0 / d[1]
    tc = torch.minimum((-1.0 - o[1]) * inv, (1.0 - o[1]) * inv)
    xc, zc = o[0] + tc * d[0], o[2] + tc * d[2]
    cap = _where((tc > EPS_T) & (xc * xc + zc * zc <= 1.0), tc, INF)
    return torch.minimum(side, cap)


def _hit_cone(o: Vec, d: Vec) -> Tensor:
    """Cone with apex (0,1,0) and base radius 1 at y = -1, closed by a base disc."""
    k2 = 0.25
    w = 1.0 - o[1]
    a = d[0] * d[0] + d[2] * d[2] - k2 * d[1] * d[1]
    b = o[0] * d[0] + o[2] * d[2] + k2 * w * d[1]
    c = o[0] * o[0] + o[2] * o[2] - k2 * w * w
    disc = b * b - a * c
    sq = torch.sqrt(disc.clamp_min(0.0))
    best = None
    for t in ((-b - sq) / a, (-b + sq) / a):
        y = o[1] + t * d[1]
        cand = _where((disc >= 0) & (t > EPS_T) & (y >= -1.0) & (y <= 1.0), t, INF)
        best = cand if best is None else torch.minimum(best, cand)
    tb = (-1.0 - o[1]) / d[1]
    xb, zb = o[0] + tb * d[0], o[2] + tb * d[2]
    base = _where((tb > EPS_T) & (xb * xb + zb * zb <= 1.0), tb, INF)
    return torch.minimum(best, base)


HIT_FUNCS = {"box": _hit_box, "ellipsoid": _hit_ellipsoid, "cylinder": _hit_cylinder, "cone": _hit_cone}


def _local_normal(kind: str, p: Vec) -> Vec:
    """Unnormalised outward normal (gradient) of a canonical shape at local point p."""
    x, y, z = p
    if kind == "box":
        ax, ay, az = x.abs(), y.abs(), z.abs()
        mx = (ax >= ay) & (ax >= az)
        my = ~mx & (ay >= az)
        mz = ~mx & ~my
        return (mx * torch.sign(x), my * torch.sign(y), mz * torch.sign(z))
    if kind == "ellipsoid":
        return (x, y, z)
    if kind == "cylinder":
        r = torch.sqrt(x * x + z * z)
        cap = (1.0 - y.abs()).abs() < (1.0 - r).abs()
        return (_where(cap, 0.0, x), _where(cap, torch.sign(y), 0.0), _where(cap, 0.0, z))
    if kind == "cone":
        r = torch.sqrt(x * x + z * z)
        base = (y + 1.0).abs() < (r - 0.5 * (1.0 - y)).abs()
        return (_where(base, 0.0, x), _where(base, -1.0, 0.25 * (1.0 - y)), _where(base, 0.0, z))
    raise ValueError(kind)


# --------------------------------------------------------------------------------------------------
# Tracing
# --------------------------------------------------------------------------------------------------


@dataclass
class EntryParams:
    """Scene parameters per entry: rows [E, ...] (dense) or a single row [1, ...] (single scene)."""

    scene: Tensor  # [E] long
    obj: Tensor  # [E or 1, n_slots, 16]
    obj_valid: Tensor  # [E or 1, n_slots]
    single: bool

    def col(self, x: Tensor) -> Tensor:
        """Per-entry values [B] -> a broadcastable [E or 1, 1] column."""
        return x[self.scene[:1] if self.single else self.scene][:, None]


def entry_params(ps: PackedScenes, scene_idx: Tensor, single: bool) -> EntryParams:
    rows = scene_idx[:1] if single else scene_idx
    return EntryParams(scene=scene_idx, obj=ps.obj[rows], obj_valid=ps.obj_valid[rows], single=single)


def _slot_cols(ep: EntryParams, g: int):
    prm = ep.obj[:, g]
    cols = [prm[:, j : j + 1] for j in range(16)]
    return cols[0:3], cols[3:12], cols[15]


def _update(best: Tensor, hid: Tensor, t: Tensor, g, idx=None):
    if idx is None:
        closer = t < best
        best.copy_(_where(closer, t, best))
        hid.copy_(_where(closer, g, hid))
    else:
        bsub = best[idx]
        closer = t < bsub
        best[idx] = _where(closer, t, bsub)
        hid[idx] = _where(closer, g, hid[idx])


def _trace_objects(
    ps: PackedScenes, ep: EntryParams, o: Vec, d: Vec, best: Tensor, hid: Tensor, any_hit: bool, cull: bool
):
    """Objects: nearest hit into (best, hid), or (any_hit) blocked flags into ``best`` as 0/inf.

    ``cull`` (single scene): slot by slot, exact tests only for rays inside the slot's bounding sphere.
    Otherwise (dense): all slots of a kind at once on [E, slots, N] tensors, so the number of kernel
    launches does not grow with the object count; the per-ray arithmetic is the same either way.
    """
    if not cull:
        _trace_objects_dense(ps, ep, o, d, best, hid, any_hit)
        return
    shape = best.shape
    dd = _dot(d, d)
    for kind, first, count in ps.groups:
        fn = HIT_FUNCS[OBJECT_KINDS[kind]]
        for g in range(first, first + count):
            if ep.single and not bool(ep.obj_valid[0, g]):
                continue
            c, m, rad = _slot_cols(ep, g)
            oc = (o[0] - c[0], o[1] - c[1], o[2] - c[2])
            # conservative bounding-sphere test, then the exact test on the candidates only
            b = _dot(oc, d)
            cc = _dot(oc, oc) - rad * rad
            cand = (cc < 0) | ((b < 0) & (b * b - dd * cc >= 0))
            if any_hit:
                cand = cand & (best > 0)
            idx = cand.expand(shape).nonzero(as_tuple=True)
            if idx[0].numel() == 0:
                continue
            o_e = tuple(x.expand(shape)[idx] if x.shape != shape else x[idx] for x in oc)
            d_e = _take(tuple(x.expand(shape) for x in d), idx)
            mm = m if ep.single else [x.expand(shape)[idx] for x in m]
            t = fn(_apply3(mm, o_e), _apply3(mm, d_e))
            if any_hit:
                best[idx] = torch.minimum(best[idx], _where(t < INF, 0.0, INF))
            else:
                _update(best, hid, t, g, idx)


def _trace_objects_dense(
    ps: PackedScenes, ep: EntryParams, o: Vec, d: Vec, best: Tensor, hid: Tensor, any_hit: bool
):
    o3 = tuple(x.unsqueeze(1) for x in o)  # [E, 1, 1|N]
    d3 = tuple(x.unsqueeze(1) for x in d)  # [E, 1, N]
    for kind, first, count in ps.groups:
        fn = HIT_FUNCS[OBJECT_KINDS[kind]]
        cols = ep.obj[:, first : first + count].permute(2, 0, 1).unsqueeze(-1).unbind(0)  # 16 x [E, P, 1]
        c, m = cols[0:3], cols[3:12]
        t = fn(_apply3(m, (o3[0] - c[0], o3[1] - c[1], o3[2] - c[2])), _apply3(m, d3))  # [E, P, N]
        t = _where(ep.obj_valid[:, first : first + count, None], t, INF)
        if any_hit:
            best.copy_(_where((t < INF).any(1), 0.0, best))
        else:
            tmin, arg = t.min(1)  # the first slot on exact ties, as the sequential loop
            _update(best, hid, tmin, (arg + first).to(torch.int32))


def _terrain_g(tr_amp, alpha, beta, oy, dy, t):
    """Height of the ray above the terrain at parameter t (rows are rays, columns terrain terms)."""
    return oy + t * dy - (tr_amp * torch.sin(alpha + t[:, None] * beta)).sum(-1)


def _trace_terrain(
    tr: Tensor, fog: Tensor, o: Vec, d: Vec, t_cap: Tensor, steps: int, hint: Tensor | None = None
) -> Tensor:
    """First crossing of y = h(x, z) for flat rays [R] (``tr`` [R or 1, K, 4], ``fog`` [R or 1]).

    Marches a quadratic grid of ``steps`` samples between the entry into and exit from the terrain's
    height slab (capped by nearer hits and the fog distance), then refines the bracket with 10
    Illinois (regula falsi) steps. Rays that have found their bracket leave the march early.

    ``hint`` (colour sub-samples only): the terrain depth of the pixel-centre ray. A sub-sample whose
    crossing lies within +-10 % of it takes that bracket directly instead of marching (it could then miss a
    ridge that only the sub-sample grazes; that affects anti-aliased colour, never the GT depth).
    """
    R = o[0].shape[0]
    dev = o[0].device
    hmax = tr[:, :, 3].abs().sum(-1)
    ox, oy, oz = o
    dx, dy, dz = d
    t_enter = _where(oy > hmax, (hmax - oy) / dy, 0.0)
    t_enter = _where((oy > hmax) & (dy >= 0), INF, t_enter)
    t_exit = _where(dy < 0, (-hmax - oy) / dy, _where(dy > 0, (hmax - oy) / dy, INF))
    t_exit = torch.minimum(torch.minimum(t_exit, t_cap), fog)
    out = torch.full((R,), INF, device=dev)
    act = (t_exit > t_enter).nonzero().squeeze(1)
    if act.numel() == 0:
        return out
    sel = (lambda x: x[act]) if tr.shape[0] > 1 else (lambda x: x)
    trs = sel(tr)
    fx, fz, ph, amp = trs[:, :, 0], trs[:, :, 1], trs[:, :, 2], trs[:, :, 3]
    ox, oy, oz, dx, dy, dz = (x[act] for x in (ox, oy, oz, dx, dy, dz))
    t0 = t_enter[act]
    span = t_exit[act] - t0
    alpha = fx * ox[:, None] + fz * oz[:, None] + ph
    beta = fx * dx[:, None] + fz * dz[:, None]
    amp = amp.expand_as(alpha)
    n = act.numel()
    ta, tb, ga, gb = (torch.zeros(n, device=dev) for _ in range(4))
    found = torch.zeros(n, dtype=torch.bool, device=dev)
    live = torch.arange(n, device=dev)  # rows still marching
    cur = {"alpha": alpha, "beta": beta, "amp": amp, "oy": oy, "dy": dy, "t0": t0, "span": span}
    if hint is not None:
        hs = hint[act]
        tl = torch.maximum(t0, hs * 0.9)
        th = torch.minimum(t0 + span, hs * 1.1 + 1e-3)
        gl = _terrain_g(amp, alpha, beta, oy, dy, tl)
        gh = _terrain_g(amp, alpha, beta, oy, dy, th)
        ok = torch.isfinite(hs) & (gl > 0) & (gh <= 0)
        h = ok.nonzero().squeeze(1)
        ta[h], ga[h], tb[h], gb[h] = tl[h], gl[h], th[h], gh[h]
        found[h] = True
        keep = (~ok).nonzero().squeeze(1)
        live = live[keep]
        cur = {k: v[keep] for k, v in cur.items()}
    # march in blocks of samples evaluated together ([rays, block, terms] tensors), retiring the rays
    # whose first crossing lies in the block; the samples are those of a one-at-a-time march
    t_prev = cur["t0"]
    g_prev = _terrain_g(cur["amp"], cur["alpha"], cur["beta"], cur["oy"], cur["dy"], t_prev)
    block = 8
    for i0 in range(1, steps + 1, block):
        if live.numel() == 0:
            break
        fr = torch.tensor([(i / steps) ** 2 for i in range(i0, min(steps, i0 + block - 1) + 1)], device=dev)
        tis = cur["t0"][:, None] + cur["span"][:, None] * fr  # [R, m]
        arg = cur["alpha"][:, None, :] + tis[:, :, None] * cur["beta"][:, None, :]  # [R, m, K]
        gis = (
            cur["oy"][:, None] + tis * cur["dy"][:, None] - (cur["amp"][:, None, :] * torch.sin(arg)).sum(-1)
        )
        cross = gis <= 0
        hit = cross.any(1)
        first = cross.to(torch.uint8).argmax(1)  # first crossing sample in the block
        h = hit.nonzero().squeeze(1)
        if h.numel():
            j = first[h]
            tbh, gbh = tis[h, j], gis[h, j]
            jm = (j - 1).clamp_min(0)
            tah = _where(j > 0, tis[h, jm], t_prev[h])
            gah = _where(j > 0, gis[h, jm], g_prev[h])
            rows = live[h]
            ta[rows], ga[rows], tb[rows], gb[rows] = tah, gah, tbh, gbh
            found[rows] = True
        keep = (~hit).nonzero().squeeze(1)
        live = live[keep]
        cur = {k: v[keep] for k, v in cur.items()}
        t_prev, g_prev = tis[keep, -1], gis[keep, -1]
    rows = found.nonzero().squeeze(1)
    if rows.numel() == 0:
        return out
    alpha, beta, amp, oy, dy = alpha[rows], beta[rows], amp[rows], oy[rows], dy[rows]
    ta, tb, ga, gb = ta[rows], tb[rows], ga[rows], gb[rows]
    side = torch.zeros_like(ta)
    for _ in range(10):
        denom = ga - gb
        tm = _where(denom > 0, (ga * tb - gb * ta) / denom, 0.5 * (ta + tb))
        tm = torch.minimum(torch.maximum(tm, ta), tb)
        gm = _terrain_g(amp, alpha, beta, oy, dy, tm)
        above = gm > 0
        ta, ga = _where(above, tm, ta), _where(above, gm, ga)
        tb, gb = _where(above, tb, tm), _where(above, gb, gm)
        gb = _where(above & (side > 0), 0.5 * gb, gb)  # Illinois: halve the stale end
        ga = _where(~above & (side < 0), 0.5 * ga, ga)
        side = _where(above, 1.0, -1.0)
    gta = _terrain_g(amp, alpha, beta, oy, dy, ta)
    gtb = _terrain_g(amp, alpha, beta, oy, dy, tb)
    t_hit = _where(gtb.abs() <= gta.abs(), tb, ta)
    out[act[rows]] = _where(t_hit > EPS_T, t_hit, INF)
    return out


@dataclass
class Hits:
    t: Tensor  # [E, N] float (inf = miss)
    hid: Tensor  # [E, N] int32 (see HIT_* above; -1 miss)


def trace(
    ps: PackedScenes,
    ep: EntryParams,
    o: Vec,
    d: Vec,
    terrain_steps: int,
    cull: bool,
    terrain_hint: Tensor | None = None,
) -> Hits:
    """Nearest hit of every ray ([E,N]; origins [E,1] or [E,N]) against the whole scene."""
    shape = torch.broadcast_shapes(o[0].shape, d[0].shape)
    dev = d[0].device
    best = torch.full(shape, INF, device=dev)
    hid = torch.full(shape, HIT_MISS, dtype=torch.int32, device=dev)
    ns = ps.n_slots
    if ps.shell_any:
        kind = ep.col(ps.shell_kind)
        lo = [ep.col(ps.shell_lo[:, k]) for k in range(3)]
        hi = [ep.col(ps.shell_hi[:, k]) for k in range(3)]
        tbox, face = None, None
        for k in range(3):  # inverted box: exit distance of the slab test
            pos = d[k] > 0
            tk = _where(pos, (hi[k] - o[k]) / d[k], (lo[k] - o[k]) / d[k])
            fk = _where(pos, 2 * k + 1, 2 * k)
            if tbox is None:
                tbox, face = tk, fk
            else:
                closer = tk < tbox
                tbox, face = _where(closer, tk, tbox), _where(closer, fk, face)
        tbox = _where((kind == SHELL_BOX) & (tbox > EPS_T), tbox, INF)
        oc = (o[0] - lo[0], o[1] - lo[1], o[2] - lo[2])  # inverted sphere: far root
        a = _dot(d, d)
        b = _dot(oc, d)
        cc = _dot(oc, oc) - hi[0] * hi[0]
        disc = b * b - a * cc
        tsph = (-b + torch.sqrt(disc.clamp_min(0.0))) / a
        tsph = _where((kind == SHELL_SPHERE) & (disc >= 0) & (tsph > EPS_T), tsph, INF)
        _update(best, hid, tbox, (ns + face).to(torch.int32))
        _update(best, hid, tsph, ns)
    if ps.ground_any:
        rad = ep.col(ps.ground_radius)
        tg = -o[1] / d[1]
        px, pz = o[0] + tg * d[0], o[2] + tg * d[2]
        ok = (tg > EPS_T) & (px * px + pz * pz <= rad * rad) & (rad > 0)
        _update(best, hid, _where(ok, tg, INF), ns + HIT_GROUND)
    _trace_objects(ps, ep, o, d, best, hid, any_hit=False, cull=cull)
    if ps.terrain_any:
        has = ep.col(ps.has_terrain).expand(shape)
        idx = has.nonzero(as_tuple=True)
        if idx[0].numel():
            tr = ps.terrain[ep.scene[:1]] if ep.single else ps.terrain[ep.scene][idx[0]]
            fog = ep.col(ps.fog_far).expand(shape)[idx] if not ep.single else ep.col(ps.fog_far)[0]
            oo = tuple(x.expand(shape)[idx] for x in o)
            dd = tuple(x.expand(shape)[idx] for x in d)
            hint = None if terrain_hint is None else terrain_hint.expand(shape)[idx]
            tt = _trace_terrain(tr, fog, oo, dd, best[idx], terrain_steps, hint)
            _update(best, hid, tt, ns + HIT_TERRAIN, idx)
    return Hits(best, hid)


def shadowed(ps: PackedScenes, ep: EntryParams, o: Vec, light: Vec, cull: bool) -> Tensor:
    """True where a ray from ``o`` towards the directional light is blocked by an object."""
    state = torch.full(o[0].shape, INF, device=o[0].device)
    _trace_objects(ps, ep, o, light, state, None, any_hit=True, cull=cull)
    return state == 0


# --------------------------------------------------------------------------------------------------
# Surface attributes: normals and materials at the hit points (flat hit lists)
# --------------------------------------------------------------------------------------------------


def surface_normals(ps: PackedScenes, ep: EntryParams, hid: Tensor, row: Tensor, x: Vec, d: Vec) -> Vec:
    """World-space unit normals facing the incoming ray, for flat hits (``row`` = entry of each hit)."""
    R = hid.shape[0]
    dev = hid.device
    n = [torch.zeros(R, device=dev) for _ in range(3)]
    ns = ps.n_slots
    scene = ep.scene[row]
    prow = torch.zeros_like(row) if ep.single else row
    for kind, first, count in ps.groups:
        sel = ((hid >= first) & (hid < first + count)).nonzero().squeeze(1)
        if sel.numel() == 0:
            continue
        prm = ep.obj[prow[sel], hid[sel].long()].t().contiguous()  # [16, R']
        m = [prm[3 + j] for j in range(9)]
        p = _take(x, sel)
        pl = _apply3(m, (p[0] - prm[0], p[1] - prm[1], p[2] - prm[2]))
        nw = _apply3t(m, _local_normal(OBJECT_KINDS[kind], pl))  # A^T n_local
        for k in range(3):
            n[k][sel] = nw[k]
    if ps.shell_any:
        sel = ((hid >= ns) & (hid < ns + 6)).nonzero().squeeze(1)
        if sel.numel():
            face = hid[sel] - ns
            sc = scene[sel]
            sph = ps.shell_kind[sc] == SHELL_SPHERE
            p = _take(x, sel)
            for k in range(3):
                box_nk = _where(face // 2 == k, _where(face % 2 == 1, -1.0, 1.0), 0.0)
                n[k][sel] = _where(sph, ps.shell_lo[sc, k] - p[k], box_nk)
    if ps.ground_any:
        n[1][hid == ns + HIT_GROUND] = 1.0
    if ps.terrain_any:
        sel = (hid == ns + HIT_TERRAIN).nonzero().squeeze(1)
        if sel.numel():
            tr = ps.terrain[scene[sel]]  # [R', K, 4]
            p = _take(x, sel)
            cs = tr[:, :, 3] * torch.cos(
                tr[:, :, 0] * p[0][:, None] + tr[:, :, 1] * p[2][:, None] + tr[:, :, 2]
            )
            n[0][sel] = -(cs * tr[:, :, 0]).sum(-1)
            n[1][sel] = 1.0
            n[2][sel] = -(cs * tr[:, :, 1]).sum(-1)
    n = _normalize(tuple(n))
    flip = _dot(n, d) > 0
    return tuple(_where(flip, -v, v) for v in n)


def surface_materials(ps: PackedScenes, ep: EntryParams, hid: Tensor, row: Tensor) -> Tensor:
    """Global material index (scene * n_mats + local id) of flat hits."""
    ns = ps.n_slots
    scene = ep.scene[row]
    h = hid.long()
    mat = torch.zeros_like(h)
    if ns:
        mat = _where(h < ns, ps.obj_mat[scene, h.clamp(0, ns - 1)], mat)
    mat = _where((h >= ns) & (h < ns + 6), ps.shell_mat[scene, (h - ns).clamp(0, 5)], mat)
    mat = _where(h == ns + HIT_GROUND, ps.ground_mat[scene], mat)
    mat = _where(h == ns + HIT_TERRAIN, ps.terrain_mat[scene], mat)
    return scene * ps.n_mats + mat


# --------------------------------------------------------------------------------------------------
# Solid textures
# --------------------------------------------------------------------------------------------------


def _hash_u32(x: Tensor) -> Tensor:
    """Integer hash on int64 values kept in [0, 2^32) (products stay below 2^63: no overflow)."""
    x = x & 0xFFFFFFFF
    x = (((x >> 16) ^ x) * 0x45D9F3B) & 0xFFFFFFFF
    x = (((x >> 16) ^ x) * 0x45D9F3B) & 0xFFFFFFFF
    return (x >> 16) ^ x


def _unit_float(h: Tensor) -> Tensor:
    return (h & 0xFFFFFF).float() * (1.0 / 16777216.0)


def _spectral_table(n: int, octaves: float, seed: int):
    """Fixed random directions x frequencies (2*pi included), phases and 1/f amplitudes."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(n, 3, generator=g, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    freq = torch.tensor([2.0 ** (octaves * k / n) for k in range(n)], dtype=torch.float64)
    freq = freq * torch.exp((torch.rand(n, generator=g, dtype=torch.float64) - 0.5) * 0.3)
    w = (dirs * freq[:, None] * 2 * math.pi).float()
    phase = (torch.rand(n, generator=g, dtype=torch.float64) * 2 * math.pi).float()
    amp = 1.0 / freq
    amp = (amp / amp.sum() * 2.2).float()
    return w, phase, amp


_FBM = _spectral_table(12, 3.5, 1234)
_FBM2 = _spectral_table(4, 1.0, 4321)


def _spectral(q: Vec, table) -> Tensor:
    """Spectral fBm: a 1/f sum of sinusoids with fixed random 3-D directions, roughly in [-1, 1]."""
    w, ph, amp = (x.to(q[0].device) for x in table)
    arg = q[0][:, None] * w[:, 0] + q[1][:, None] * w[:, 1] + q[2][:, None] * w[:, 2] + ph
    return (torch.sin(arg) * amp).sum(-1)


def _low_freq(q: Vec) -> Tensor:
    """Slow variation in [0, 1] that breaks the periodicity of checkers and stripes."""
    a = torch.sin(q[0] * 0.23 + q[1] * 0.31 - q[2] * 0.17 + 0.7)
    b = torch.sin(-q[0] * 0.13 + q[1] * 0.19 + q[2] * 0.29 + 2.1)
    return 0.5 + 0.25 * (a + b)


def _fhash(x: Tensor, y: Tensor, z: Tensor, salt: float) -> Tensor:
    """Cheap float hash of integer-valued coordinates to [0, 1) (deterministic per device)."""
    a = torch.sin(x * 12.9898 + y * 78.233 + z * 37.719 + salt) * 43758.5453
    return a - torch.floor(a)


def _worley(q: Vec) -> tuple[Tensor, Tensor]:
    """Cellular noise: distance to the nearest jittered feature point (2x2x2 nearest cells) and a cell hash."""
    base = [torch.floor(v) + _where(v - torch.floor(v) > 0.5, 0.0, -1.0) for v in q]
    best = torch.full_like(q[0], 1e9)
    cell = torch.zeros_like(q[0])
    for ox in (0.0, 1.0):
        for oy in (0.0, 1.0):
            for oz in (0.0, 1.0):
                cx, cy, cz = base[0] + ox, base[1] + oy, base[2] + oz
                h = _fhash(cx, cy, cz, 0.0)
                px = cx + 0.15 + 0.7 * h
                py = cy + 0.15 + 0.7 * _fhash(cx, cy, cz, 1.7)
                pz = cz + 0.15 + 0.7 * _fhash(cx, cy, cz, 3.1)
                dd = (q[0] - px) ** 2 + (q[1] - py) ** 2 + (q[2] - pz) ** 2
                closer = dd < best
                best = _where(closer, dd, best)
                cell = _where(closer, h, cell)
    return torch.sqrt(best), cell


def albedo(ps: PackedScenes, gmat: Tensor, x: Vec) -> Vec:
    """Albedo at flat hit points x ([R] each) with global material ids gmat ([R])."""
    prm = ps.mat_param[gmat].t().contiguous()  # [21, R]: contiguous columns
    kind = ps.mat_kind[gmat]
    m = [prm[j] for j in range(9)]
    q = _apply3(m, (x[0] + prm[9], x[1] + prm[10], x[2] + prm[11]))
    v1 = torch.zeros_like(q[0])  # mix c0 -> c1
    v2 = torch.zeros_like(q[0])  # mix towards c2
    mod = torch.ones_like(q[0])  # brightness modulation
    for k, name in enumerate(TEXTURE_KINDS):
        if name == "constant":
            continue
        idx = (kind == k).nonzero().squeeze(1)
        if idx.numel() == 0:
            continue
        qk = _take(q, idx)
        if name == "fbm":
            v1[idx] = (0.5 + 0.5 * _spectral(qk, _FBM)).clamp(0, 1)
            v2[idx] = (0.3 + 0.35 * _spectral(qk, _FBM2)).clamp(0, 0.7)
        elif name == "worley":
            dist, cell = _worley(qk)
            v1[idx] = (dist * 1.3).clamp(0, 1)
            v2[idx] = 0.7 * cell
        elif name == "checker":
            s = torch.floor(qk[0]) + torch.floor(qk[1]) + torch.floor(qk[2])
            v1[idx] = s - 2.0 * torch.floor(s * 0.5)
            mod[idx] = 0.75 + 0.5 * _low_freq(qk)
        elif name == "stripes":
            u = qk[0] + 0.25 * torch.sin(qk[1] * 1.3 + qk[2] * 0.7)
            v1[idx] = ((u - torch.floor(u)) < 0.5).float()
            mod[idx] = 0.75 + 0.5 * _low_freq(qk)
        elif name == "marble":
            v1[idx] = 0.5 + 0.5 * torch.sin(qk[0] * 2 * math.pi + 3.0 * _spectral(qk, _FBM))
            v2[idx] = 0.2 * (0.5 + 0.5 * _spectral((qk[2], qk[0], qk[1]), _FBM2))
    out = []
    for k in range(3):
        c0, c1, c2 = prm[12 + k], prm[15 + k], prm[18 + k]
        base = c0 + (c1 - c0) * v1
        out.append(((base + (c2 - base) * v2) * mod).clamp(0.0, 1.0))
    return tuple(out)


# --------------------------------------------------------------------------------------------------
# Rays and rendering of entries
# --------------------------------------------------------------------------------------------------


def pixel_coords(H: int, W: int, offsets, device) -> tuple[Tensor, Tensor]:
    """Image coordinates (u, v) of all samples, sample-major: [len(offsets) * H * W] each."""
    v, u = torch.meshgrid(
        torch.arange(H, device=device, dtype=torch.float32),
        torch.arange(W, device=device, dtype=torch.float32),
        indexing="ij",
    )
    us = torch.cat([(u + du).reshape(-1) for du, _ in offsets])
    vs = torch.cat([(v + dv).reshape(-1) for _, dv in offsets])
    return us, vs


def camera_rays(w2c: Tensor, K: Tensor, us: Tensor, vs: Tensor):
    """Origins ([E,1] each) and z-normalised world directions ([E, N] each) through image coords (us, vs).

    Integer coordinates are pixel centres and the principal point is (W/2, H/2), as in VGGT.
    """
    fx, fy, cx, cy = K[:, 0, 0:1], K[:, 1, 1:2], K[:, 0, 2:3], K[:, 1, 2:3]
    xc = (us[None] - cx) / fx
    yc = (vs[None] - cy) / fy
    R = [w2c[:, i, j : j + 1] for i in range(3) for j in range(3)]
    t = (w2c[:, 0, 3:4], w2c[:, 1, 3:4], w2c[:, 2, 3:4])
    d = (R[0] * xc + R[3] * yc + R[6], R[1] * xc + R[4] * yc + R[7], R[2] * xc + R[5] * yc + R[8])
    o = _apply3t(R, (-t[0], -t[1], -t[2]))
    return o, d


def trace_depth(
    ps: PackedScenes,
    ep: EntryParams,
    w2c: Tensor,
    K: Tensor,
    us: Tensor,
    vs: Tensor,
    terrain_steps: int,
    cull: bool,
) -> Tensor:
    """[E, 2, N]: z-depth of rays through image coords (us, vs) (0 = invalid: miss or beyond the fog)
    and the terrain depth (inf unless the ray hit the terrain; a hint for the colour pass)."""
    o, d = camera_rays(w2c, K, us, vs)
    hits = trace(ps, ep, o, d, terrain_steps, cull)
    ok = torch.isfinite(hits.t) & (hits.t < ep.col(ps.fog_far))
    terr = _where(hits.hid == ps.n_slots + HIT_TERRAIN, hits.t, INF)
    return torch.stack([_where(ok, hits.t, 0.0), terr], 1)


def shade_rays(
    ps: PackedScenes,
    ep: EntryParams,
    w2c: Tensor,
    K: Tensor,
    us: Tensor,
    vs: Tensor,
    shadows: bool,
    terrain_steps: int,
    cull: bool,
    terrain_hint: Tensor | None = None,
) -> Tensor:
    """Linear shaded colour [E, 3, N] of rays through image coords (us, vs)."""
    o, d = camera_rays(w2c, K, us, vs)
    hits = trace(ps, ep, o, d, terrain_steps, cull, terrain_hint)
    shape = hits.t.shape
    dev = hits.t.device
    fog = ep.col(ps.fog_far)
    hitmask = torch.isfinite(hits.t)
    sel = hitmask.nonzero(as_tuple=True)
    row = sel[0]
    t = hits.t[sel]
    de = _take(tuple(x.expand(shape) for x in d), sel)
    x = tuple(oo.expand(shape)[sel] + t * dd for oo, dd in zip(o, de))
    hid = hits.hid[sel]
    n = surface_normals(ps, ep, hid, row, x, de)
    light = ps.light[ep.scene[row]]
    lv = (light[:, 0], light[:, 1], light[:, 2])
    ndl = _dot(n, lv).clamp_min(0.0)
    if shadows and ps.shadows_any:
        cast = (ndl > 0) & ps.shadows[ep.scene[row]]
        ci = cast.nonzero().squeeze(1)
        if ci.numel():
            off = 1e-3 * ps.scale[ep.scene[row[ci]]] + 2e-4 * t[ci]
            so = tuple(xx[ci] + nn[ci] * off for xx, nn in zip(x, n))
            if ep.single:
                so = tuple(v[None] for v in so)
                blocked = shadowed(ps, ep, so, tuple(v[ci][None] for v in lv), cull)[0]
            else:  # dense: keep the [E, N] layout (per-entry parameters), test the cast rays only
                full = []
                for v in so:
                    z = torch.zeros(shape, device=dev)
                    z[row[ci], sel[1][ci]] = v
                    full.append(z)
                light_e = ep.col(ps.light[:, 0]), ep.col(ps.light[:, 1]), ep.col(ps.light[:, 2])
                blocked = shadowed(ps, ep, tuple(full), light_e, False)[row[ci], sel[1][ci]]
            ndl[ci] = _where(blocked, 0.0, ndl[ci])
    amb = ps.ambient[ep.scene[row]]
    shade = amb + (1.0 - amb) * ndl
    alb = albedo(ps, surface_materials(ps, ep, hid, row), x)
    fogd = fog.expand(shape)[sel]
    fogw = _where(torch.isfinite(fogd), ((t - 0.6 * fogd) / (0.4 * fogd)).clamp(0.0, 1.0), 0.0)
    up = (0.5 + d[1] * torch.rsqrt(_dot(d, d))).clamp(0.0, 1.0)  # sky gradient for misses and fog
    out = torch.empty(shape[0], 3, shape[1], device=dev)
    for k in range(3):
        top, hor = ep.col(ps.sky[:, 0, k]), ep.col(ps.sky[:, 1, k])
        skyc = (hor + (top - hor) * up).expand(shape)
        ck = skyc.clone()
        surf = alb[k] * shade
        ck[sel] = surf + (skyc[sel] - surf) * fogw
        out[:, k] = ck
    return out


_NOISE_POOL: dict = {}


def _noise_pool(device) -> Tensor:
    """A fixed 3x509x509 standard-normal tile (same values on every device); views read shifted windows."""
    key = str(device)
    if key not in _NOISE_POOL:
        g = torch.Generator().manual_seed(777)
        _NOISE_POOL[key] = torch.randn(3, 509, 509, generator=g).to(device)
    return _NOISE_POOL[key]


def photometric(img: Tensor, params: Tensor) -> Tensor:
    """Per-view exposure gain, white balance, gamma and sensor noise (a seeded window of a fixed tile)."""
    E, _, H, W = img.shape
    gain = params[:, 0].view(E, 1, 1, 1)
    wb = params[:, 1:4].view(E, 3, 1, 1)
    gamma = params[:, 4].view(E, 1, 1, 1)
    sigma = params[:, 5].view(E, 1, 1, 1)
    x = (img * gain * wb).clamp(0.0, 1.0) ** (1.0 / gamma)
    pool = _noise_pool(img.device)
    P = pool.shape[-1]
    seeds = params[:, 6].long()
    rows = (torch.arange(H, device=img.device)[None] + (seeds % P)[:, None]) % P  # [E, H]
    cols = (torch.arange(W, device=img.device)[None] + ((seeds // P) % P)[:, None]) % P  # [E, W]
    noise = pool[:, rows[:, :, None], cols[:, None, :]].permute(1, 0, 2, 3)  # [E, 3, H, W]
    return (x + noise * sigma).clamp(0.0, 1.0)


def covisible_fraction(
    depth_src: Tensor,
    K_src: Tensor,
    w2c_src: Tensor,
    depth_dst: Tensor,
    K_dst: Tensor,
    w2c_dst: Tensor,
    rel_tol: float = 0.03,
) -> Tensor:
    """Fraction of all src pixels whose GT surface point is visible (not occluded) in dst. [E]."""
    E, H, W = depth_src.shape
    dev = depth_src.device
    v, u = torch.meshgrid(
        torch.arange(H, device=dev, dtype=torch.float32),
        torch.arange(W, device=dev, dtype=torch.float32),
        indexing="ij",
    )
    z = depth_src.reshape(E, -1)
    xs = (u.reshape(1, -1) - K_src[:, 0, 2:3]) / K_src[:, 0, 0:1] * z
    ys = (v.reshape(1, -1) - K_src[:, 1, 2:3]) / K_src[:, 1, 1:2] * z
    Rs = [w2c_src[:, i, j : j + 1] for i in range(3) for j in range(3)]
    ts = (w2c_src[:, 0, 3:4], w2c_src[:, 1, 3:4], w2c_src[:, 2, 3:4])
    pw = _apply3t(Rs, (xs - ts[0], ys - ts[1], z - ts[2]))
    Rd = [w2c_dst[:, i, j : j + 1] for i in range(3) for j in range(3)]
    pc = _apply3(Rd, pw)
    pc = (pc[0] + w2c_dst[:, 0, 3:4], pc[1] + w2c_dst[:, 1, 3:4], pc[2] + w2c_dst[:, 2, 3:4])
    zc = pc[2]
    ud = K_dst[:, 0, 0:1] * pc[0] / zc.clamp_min(1e-9) + K_dst[:, 0, 2:3]
    vd = K_dst[:, 1, 1:2] * pc[1] / zc.clamp_min(1e-9) + K_dst[:, 1, 2:3]
    ui, vi = torch.round(ud), torch.round(vd)
    inside = (z > 0) & (zc > 1e-6) & (ui >= 0) & (ui <= W - 1) & (vi >= 0) & (vi <= H - 1)
    lin = _where(inside, vi * W + ui, 0.0).long()
    zd = torch.gather(depth_dst.reshape(E, -1), 1, lin)
    vis = inside & (zd > 0) & ((zd - zc).abs() <= rel_tol * zc)
    return vis.float().mean(1)
