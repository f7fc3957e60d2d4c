"""SynthMV: procedural multi-view scenes with exact ground truth, rendered online in plain PyTorch.

A scene is a pure function of an integer seed (plus the ``SynthConfig``): scene parameters come from
a CPU ``torch.Generator``; rendering is fp32, element-wise, without atomics, so the same seed gives
the same tensors on the same device whether a scene is rendered alone or in a batch. Seed ranges
are disjoint per split: train < 1e7 <= val < 2e7 <= test < 3e7 (data.md §4).

Families (equal mix by default): ``room`` (inside-out box room with furniture), ``orbit`` (objects on
a ground disc, cameras on a shell, sky or a textured far sphere) and ``flythrough`` (height-field
terrain with objects, forward-moving camera). Tiers ``easy``/``medium``/``hard`` change baselines,
occlusion and the textureless fraction; ``ood`` adds a held-out primitive (cone) and texture (marble).

Per view: image [3,H,W] in [0,1], z-depth (0 = invalid: sky or beyond the fog distance), valid mask,
intrinsics (square pixels, principal point (W/2, H/2), integer pixel coordinates at pixel centres,
as VGGT), OpenCV world-to-camera extrinsics in the scene's world frame (+y up), world points, and the
fraction of pixels covisible with view 0 (>= ``min_covisibility``, checked by reprojecting GT depth
with an occlusion test; cameras are resampled with shrinking baselines until it holds).

Typical use::

    sample = render_scene(20_000_003, num_views=8, image_size=224, device="cuda")
    batch = render_batch([1, 2, 3, 4], num_views=6, image_size=224, device="cuda")  # [B,S,...]
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields, replace

import numpy as np
import torch
from torch import Tensor

from .synth_render import (
    covisible_fraction,
    entry_params,
    pack_scenes,
    photometric,
    pixel_coords,
    shade_rays,
    trace,
    trace_depth,
)
from .synth_scenes import (
    FAMILIES,
    OBJECT_KINDS,
    TEXTURE_KINDS,
    TIERS,
    Rng,
    sample_photometric,
    sample_scene,
    stream_seed,
)

SPLITS = {"train": (0, 10_000_000), "val": (10_000_000, 20_000_000), "test": (20_000_000, 30_000_000)}
SPLIT_SIZES = {"val": 128, "test": 512}  # data.md §4

__all__ = [
    "FAMILIES",
    "SPLITS",
    "SPLIT_SIZES",
    "TIERS",
    "SceneBatch",
    "SceneSample",
    "SynthConfig",
    "SyntheticMultiView",
    "cast_rays",
    "render_batch",
    "render_scene",
    "scene_hash",
    "scene_spec",
    "split_of_seed",
    "split_seeds",
    "train_step_seeds",
    "unproject",
]


@dataclass(frozen=True)
class SynthConfig:
    """Generator settings. Families/tiers are drawn per seed with these weights unless given explicitly."""

    families: tuple[str, ...] = FAMILIES
    family_weights: tuple[float, ...] | None = None
    tiers: tuple[str, ...] = ("easy", "medium", "hard")
    tier_weights: tuple[float, ...] | None = None
    supersample: int = 2  # n x n samples per pixel for the colour (GT comes from pixel-centre rays)
    shadows: bool = True  # one shadow ray per colour sample (scenes still switch shadows off at random)
    photometric: bool = True  # per-view exposure, white balance, gamma and noise
    min_covisibility: float = 0.25
    min_valid_view0: float = 0.4
    max_rounds: int = 8  # camera re-sampling rounds before the whole scene is re-drawn
    max_attempts: int = 6  # scene re-draws before giving up (never reached in practice)
    terrain_steps: int = 40
    mode: str = "auto"  # "single" (per scene, bounding-sphere culling: fast on CPU), "dense" (whole
    # batch at once, the slots of a kind vectorised: few kernel launches, for GPUs), "auto" = single on
    # CPU, dense on CUDA. Both give identical results.
    # rays per chunk (None: 65536 in single mode; dense: 64 M / widest slot group); never changes results
    ray_chunk: int | None = None
    covisibility_matrix: bool = False  # also compute the full [S,S] matrix (costs S^2 reprojections)

    def __post_init__(self):
        for f in self.families:
            if f not in FAMILIES:
                raise ValueError(f"unknown family {f!r}; expected a subset of {FAMILIES}")
        for t in self.tiers:
            if t not in TIERS:
                raise ValueError(f"unknown tier {t!r}; expected a subset of {TIERS}")
        if self.mode not in ("auto", "single", "dense"):
            raise ValueError(f"mode must be auto, single or dense, got {self.mode!r}")
        if self.supersample not in (1, 2, 3, 4):
            raise ValueError(f"supersample must be 1..4, got {self.supersample}")
        for name, w, opts in (
            ("family_weights", self.family_weights, self.families),
            ("tier_weights", self.tier_weights, self.tiers),
        ):
            if w is not None and len(w) != len(opts):
                raise ValueError(f"{name} has {len(w)} entries for {len(opts)} options")


@dataclass
class SceneSample:
    """One scene with S views (all tensors on one device)."""

    images: Tensor  # [S,3,H,W] float32 in [0,1]
    depth: Tensor  # [S,H,W] float32 z-depth, 0 = invalid
    valid: Tensor  # [S,H,W] bool
    intrinsics: Tensor  # [S,3,3] float32, pixels
    extrinsics: Tensor  # [S,3,4] float32 world->camera (OpenCV)
    world_points: Tensor  # [S,H,W,3] float32 (0 where invalid)
    covisibility: Tensor  # [S] fraction of pixels covisible with view 0 (or [S,S] with covisibility_matrix)
    metadata: dict = field(default_factory=dict)

    def to(self, device) -> SceneSample:
        return replace(
            self,
            **{
                f.name: getattr(self, f.name).to(device)
                for f in fields(self)
                if isinstance(getattr(self, f.name), Tensor)
            },
        )

    def numpy(self) -> dict:
        return {
            f.name: getattr(self, f.name).cpu().numpy()
            for f in fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }


@dataclass
class SceneBatch:
    """B scenes with the same S and image size: tensors are SceneSample's with a leading B axis."""

    images: Tensor
    depth: Tensor
    valid: Tensor
    intrinsics: Tensor
    extrinsics: Tensor
    world_points: Tensor
    covisibility: Tensor
    metadata: list[dict]

    def __len__(self) -> int:
        return self.images.shape[0]

    def scene(self, i: int) -> SceneSample:
        return SceneSample(**{f.name: getattr(self, f.name)[i] for f in fields(self)})

    def to(self, device) -> SceneBatch:
        return replace(
            self,
            **{
                f.name: getattr(self, f.name).to(device)
                for f in fields(self)
                if isinstance(getattr(self, f.name), Tensor)
            },
        )


# --------------------------------------------------------------------------------------------------
# Seeds and splits
# --------------------------------------------------------------------------------------------------


def split_of_seed(seed: int) -> str:
    for name, (lo, hi) in SPLITS.items():
        if lo <= seed < hi:
            return name
    raise ValueError(f"seed {seed} is outside every split range {SPLITS}")


def split_seeds(split: str, count: int | None = None, start: int = 0) -> list[int]:
    """The fixed seeds of a split (val: 128, test: 512 by default), in order."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {tuple(SPLITS)}")
    if count is None:
        if split not in SPLIT_SIZES:
            raise ValueError("the train split is open-ended: give a count")
        count = SPLIT_SIZES[split]
    lo, hi = SPLITS[split]
    if lo + start + count > hi:
        raise ValueError(f"{count} seeds from {start} exceed the {split} range")
    return list(range(lo + start, lo + start + count))


def train_step_seeds(run_seed: int, step: int, batch: int, views: tuple[int, int]) -> tuple[list[int], int]:
    """Training scene seeds and view count for one optimiser step: a pure function of (run_seed, step),
    so a resumed run sees exactly the data it would have seen."""
    lo, hi = views
    s = lo + stream_seed(run_seed * 1_000_003 + step, 999) % (hi - lo + 1)
    seeds = [stream_seed(run_seed * 1_000_003 + step, j) % SPLITS["train"][1] for j in range(batch)]
    return seeds, s


def _pick(seed: int, cfg: SynthConfig, family: str | None, tier: str | None) -> tuple[str, str]:
    rng = Rng(stream_seed(seed, 0))
    fam = family or rng.choice(list(cfg.families), cfg.family_weights)
    tr = tier or rng.choice(list(cfg.tiers), cfg.tier_weights)
    return fam, tr


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


def _image_hw(image_size) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = image_size
    return int(h), int(w)


class _SceneState:
    def __init__(self, seed: int, S: int, cfg: SynthConfig, family, tier):
        self.seed, self.S, self.cfg = seed, S, cfg
        self.family, self.tier = _pick(seed, cfg, family, tier)
        self.attempt = -1
        self.rounds = 0  # re-sampling rounds since the cameras were last drawn from scratch
        self.restart()

    def restart(self):
        self.attempt += 1
        if self.attempt >= self.cfg.max_attempts:
            raise RuntimeError(
                f"SynthMV seed {self.seed}: no camera set with >= {self.cfg.min_covisibility:.0%} covisibility "
                f"after {self.attempt} scene re-draws"
            )
        self.spec, self.sampler = sample_scene(self.seed, self.family, self.tier, self.attempt)
        self.w2c = np.zeros((self.S, 3, 4))
        self.fov = np.zeros(self.S)
        self.spread = [1.0] * self.S
        self.tries = [0] * self.S
        self.ok0 = self._sample(0)
        for i in range(1, self.S):
            self._sample(i)
        self.photo = sample_photometric(Rng(stream_seed(self.seed, 3 + 16 * self.attempt)), self.S)

    def _sample(self, i: int) -> bool:
        self.tries[i] += 1
        out = self.sampler.sample(i, self.spread[i])
        if out is None:
            return False
        self.w2c[i], self.fov[i] = out[0], out[1]
        return True


def _intrinsics(fov: np.ndarray, H: int, W: int) -> np.ndarray:
    f = (W / 2.0) / np.tan(fov / 2.0)
    K = np.zeros((fov.shape[0], 3, 3))
    K[:, 0, 0] = f
    K[:, 1, 1] = f
    K[:, 0, 2] = W / 2.0
    K[:, 1, 2] = H / 2.0
    K[:, 2, 2] = 1.0
    return K


def _chunks(n: int, per: int):
    for i in range(0, n, per):
        yield slice(i, min(n, i + per))


def _render_entries(
    ps,
    b_idx: Tensor,
    w2c: Tensor,
    K: Tensor,
    us: Tensor,
    vs: Tensor,
    single: bool,
    chunk: int,
    fn,
    channels: int,
    hint: Tensor | None = None,
    **kw,
) -> Tensor:
    """Run ``fn`` (trace_depth or shade_rays) over entries x rays in chunks; returns [E, channels, N]."""
    E, N = b_idx.shape[0], us.shape[0]
    out = torch.empty(E, channels, N, device=us.device)
    if hint is not None:
        kw = dict(kw)
    if single:  # all entries belong to one scene: chunk along the rays (cache-sized on the CPU)
        ep = entry_params(ps, b_idx, single=True)
        for sl in _chunks(N, max(1, chunk // E)):
            if hint is not None:
                kw["terrain_hint"] = hint[:, sl]
            out[:, :, sl] = fn(ps, ep, w2c, K, us[sl], vs[sl], cull=True, **kw).view(E, channels, -1)
    else:
        for sl in _chunks(E, max(1, chunk // N)):
            ep = entry_params(ps, b_idx[sl], single=False)
            if hint is not None:
                kw["terrain_hint"] = hint[sl]
            out[sl] = fn(ps, ep, w2c[sl], K[sl], us, vs, cull=False, **kw).view(-1, channels, N)
    return out


def render_batch(
    seeds: Sequence[int],
    num_views: int,
    image_size=224,
    device="cpu",
    config: SynthConfig | None = None,
    family: str | None = None,
    tier: str | None = None,
) -> SceneBatch:
    """Render B scenes (one per seed) with ``num_views`` views each; returns tensors with a leading B axis."""
    cfg = config or SynthConfig()
    if num_views < 1:
        raise ValueError(f"num_views must be >= 1, got {num_views}")
    if family is not None and family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    if tier is not None and tier not in TIERS:
        raise ValueError(f"unknown tier {tier!r}; expected one of {TIERS}")
    device = torch.device(device)
    H, W = _image_hw(image_size)
    B, S = len(seeds), num_views
    states = [_SceneState(int(s), S, cfg, family, tier) for s in seeds]
    depth = torch.zeros(B, S, H, W, device=device)
    terrain_t = torch.full((B, S, H, W), math.inf, device=device)
    pending = [(b, s) for b in range(B) for s in range(S)]
    single = cfg.mode == "single" or (cfg.mode == "auto" and device.type == "cpu")
    us1, vs1 = pixel_coords(H, W, [(0.0, 0.0)], device)
    rounds = 0
    covis = torch.ones(B, S, device=device)
    while True:
        ps = pack_scenes([st.spec for st in states], device)
        # dense mode holds [entries, slots of a kind, rays] tensors: about 64 M elements per chunk
        widest = max([count for _, _, count in ps.groups] or [1])
        chunk = cfg.ray_chunk or (65536 if single else max(1 << 18, (1 << 26) // widest))
        K_all = torch.from_numpy(np.stack([_intrinsics(st.fov, H, W) for st in states])).float().to(device)
        w2c_all = torch.from_numpy(np.stack([st.w2c for st in states])).float().to(device)
        groups = [[e for e in pending if e[0] == b] for b in range(B)] if single else [pending]
        for group in groups:
            if not group:
                continue
            bs = torch.tensor(group, dtype=torch.long)
            b_idx, s_idx = bs[:, 0].to(device), bs[:, 1].to(device)
            d = _render_entries(
                ps,
                b_idx,
                w2c_all[b_idx, s_idx],
                K_all[b_idx, s_idx],
                us1,
                vs1,
                single,
                chunk,
                trace_depth,
                2,
                terrain_steps=cfg.terrain_steps,
            )
            depth[b_idx, s_idx] = d[:, 0].view(-1, H, W)
            terrain_t[b_idx, s_idx] = d[:, 1].view(-1, H, W)
        valid0 = (depth[:, 0] > 0).float().mean((1, 2))
        if S > 1:
            d0 = depth[:, :1].expand(B, S - 1, H, W).reshape(-1, H, W)
            K0 = K_all[:, :1].expand(B, S - 1, 3, 3).reshape(-1, 3, 3)
            E0 = w2c_all[:, :1].expand(B, S - 1, 3, 4).reshape(-1, 3, 4)
            ds, Ks, Es = (
                depth[:, 1:].reshape(-1, H, W),
                K_all[:, 1:].reshape(-1, 3, 3),
                w2c_all[:, 1:].reshape(-1, 3, 4),
            )
            fwd = covisible_fraction(ds, Ks, Es, d0, K0, E0)
            bwd = covisible_fraction(d0, K0, E0, ds, Ks, Es)
            covis[:, 1:] = torch.minimum(fwd, bwd).view(B, S - 1)
        valid0_c, covis_c = valid0.cpu(), covis.cpu()
        pending = []
        for b, st in enumerate(states):
            restart = (not st.ok0) or float(valid0_c[b]) < cfg.min_valid_view0
            bad = [s for s in range(1, S) if float(covis_c[b, s]) < cfg.min_covisibility]
            if restart or (bad and st.rounds >= cfg.max_rounds):
                if restart and st.tries[0] < 4:
                    # a poor first view: redraw all cameras of the same scene before redrawing the scene
                    st.spread = [1.0] * S
                    st.ok0 = st._sample(0)
                    for i in range(1, S):
                        st._sample(i)
                else:
                    st.restart()
                st.rounds = 0
                pending += [(b, s) for s in range(S)]
                continue
            if bad:
                st.rounds += 1
            for s in bad:
                st.spread[s] *= 0.7
                st._sample(s)
                pending.append((b, s))
        if not pending:
            break
        rounds += 1
        if rounds > cfg.max_rounds * (cfg.max_attempts + 1) + 16:
            raise RuntimeError("SynthMV camera sampling did not converge")  # defensive; bounded above
    # colour pass: n x n samples per pixel, averaged
    n = cfg.supersample
    st_off = [(i + 0.5) / n - 0.5 for i in range(n)]
    us, vs = pixel_coords(H, W, [(du, dv) for dv in st_off for du in st_off], device)
    images = torch.zeros(B, S, 3, H, W, device=device)
    photo = torch.from_numpy(np.stack([st.photo for st in states])).float().to(device)
    entries = [(b, s) for b in range(B) for s in range(S)]
    groups = [[e for e in entries if e[0] == b] for b in range(B)] if single else [entries]
    for group in groups:
        bs = torch.tensor(group, dtype=torch.long)
        b_idx, s_idx = bs[:, 0].to(device), bs[:, 1].to(device)
        hint = None
        if ps.terrain_any:  # every sub-sample starts from its pixel centre's terrain depth
            hint = terrain_t[b_idx, s_idx].view(-1, 1, H * W).expand(-1, n * n, -1).reshape(-1, n * n * H * W)
        img = _render_entries(
            ps,
            b_idx,
            w2c_all[b_idx, s_idx],
            K_all[b_idx, s_idx],
            us,
            vs,
            single,
            chunk,
            shade_rays,
            3,
            hint=hint,
            shadows=cfg.shadows,
            terrain_steps=cfg.terrain_steps,
        )
        img = img.view(-1, 3, n * n, H, W).mean(2)
        if cfg.photometric:
            img = photometric(img, photo[b_idx, s_idx])
        images[b_idx, s_idx] = img.clamp(0.0, 1.0)
    valid = depth > 0
    world = unproject(depth, K_all, w2c_all)
    if cfg.covisibility_matrix and S > 1:
        covis = covisibility_matrix(depth, K_all, w2c_all)
    metas = []
    for st in states:
        kinds = sorted({OBJECT_KINDS[k] for k in st.spec.obj_kind})
        texs = sorted({TEXTURE_KINDS[k] for k in st.spec.mat_kind})
        metas.append(
            {
                "seed": st.seed,
                "split": split_of_seed(st.seed) if st.seed < SPLITS["test"][1] else None,
                "family": st.family,
                "tier": st.tier,
                "attempt": st.attempt,
                "render_rounds": rounds + 1,
                "camera_tries": list(st.tries),
                "baseline_spread": list(st.spread),
                "num_objects": len(st.spec.obj_kind),
                "object_kinds": kinds,
                "texture_kinds": texs,
                "shadows": bool(st.spec.shadows and cfg.shadows),
                "fov_deg": [math.degrees(float(f)) for f in st.fov],
                "image_size": [H, W],
                "num_views": S,
            }
        )
    return SceneBatch(
        images=images,
        depth=depth,
        valid=valid,
        intrinsics=K_all,
        extrinsics=w2c_all,
        world_points=world,
        covisibility=covis,
        metadata=metas,
    )


def render_scene(
    seed: int,
    num_views: int = 8,
    image_size=224,
    device="cpu",
    config: SynthConfig | None = None,
    family: str | None = None,
    tier: str | None = None,
) -> SceneSample:
    """Render one scene; identical to the corresponding entry of ``render_batch``."""
    return render_batch([seed], num_views, image_size, device, config, family, tier).scene(0)


def unproject(depth: Tensor, K: Tensor, w2c: Tensor) -> Tensor:
    """World points [...,H,W,3] from z-depth, intrinsics and world->camera extrinsics (0 where depth is 0).

    The formula of ``lite3r.geometry.unproject_depth`` written element-wise in float32, so that a scene's
    points do not depend on the batch it was rendered in (batched matmuls may round differently)."""
    H, W = depth.shape[-2:]
    dev = depth.device
    v, u = torch.meshgrid(
        torch.arange(H, device=dev, dtype=torch.float32),
        torch.arange(W, device=dev, dtype=torch.float32),
        indexing="ij",
    )
    fx, fy = K[..., 0, 0, None, None], K[..., 1, 1, None, None]
    cx, cy = K[..., 0, 2, None, None], K[..., 1, 2, None, None]
    x = (u - cx) / fx * depth
    y = (v - cy) / fy * depth
    R = w2c[..., :3, :3]
    t = w2c[..., :3, 3]
    pc = torch.stack([x, y, depth], -1) - t[..., None, None, :]
    # X_world = R^T (X_cam - t), written element-wise (no matmul: batch-size independent bits)
    pw = [sum(R[..., i, k, None, None] * pc[..., i] for i in range(3)) for k in range(3)]
    out = torch.stack(pw, -1)
    return torch.where((depth > 0)[..., None], out, torch.zeros_like(out))


def covisibility_matrix(depth: Tensor, K: Tensor, w2c: Tensor) -> Tensor:
    """[B,S,S]: fraction of view i's pixels visible in view j (occlusion-tested)."""
    B, S = depth.shape[:2]
    ii, jj = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
    ii, jj = ii.reshape(-1), jj.reshape(-1)
    out = torch.zeros(B, S * S, device=depth.device)
    for b in range(B):
        out[b] = covisible_fraction(depth[b, ii], K[b, ii], w2c[b, ii], depth[b, jj], K[b, jj], w2c[b, jj])
    return out.view(B, S, S)


def scene_spec(metadata: dict):
    """The scene description (geometry, materials) behind a rendered sample's metadata."""
    spec, _ = sample_scene(metadata["seed"], metadata["family"], metadata["tier"], metadata["attempt"])
    return spec


def cast_rays(
    metadata: dict, origins: Tensor, directions: Tensor, terrain_steps: int | None = None
) -> Tensor:
    """Independent re-intersection: ray parameter t of the first hit (inf = miss) of rays
    ``origins + t * directions`` ([R,3] each) in the scene of ``metadata``. Used to check GT depth."""
    spec = scene_spec(metadata)
    dev = origins.device
    ps = pack_scenes([spec], dev)
    ep = entry_params(ps, torch.zeros(1, dtype=torch.long, device=dev), single=True)
    o = tuple(origins[:, k][None].float() for k in range(3))
    d = tuple(directions[:, k][None].float() for k in range(3))
    steps = terrain_steps or SynthConfig().terrain_steps
    return trace(ps, ep, o, d, steps, cull=True).t[0]


def scene_hash(sample: SceneSample | SceneBatch) -> str:
    """SHA-256 over the rendered tensors (to detect generator drift; device-specific)."""
    h = hashlib.sha256()
    for name in ("images", "depth", "intrinsics", "extrinsics"):
        h.update(np.ascontiguousarray(getattr(sample, name).detach().cpu().numpy()).tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------------


class SyntheticMultiView(torch.utils.data.IterableDataset):
    """Stream of rendered scenes.

    - ``split="train"``: an endless stream of random train seeds; each DataLoader worker draws from its
      own generator seeded by (``seed``, worker id), so workers never share a stream.
    - ``split="val" | "test"``: the fixed seeds of the split (``count`` of them), sharded across workers.
    ``num_views`` is an int or an inclusive (lo, hi) range drawn per item; ``scenes_per_item`` > 1
    yields ``SceneBatch`` objects (one S per item), otherwise ``SceneSample``.
    """

    def __init__(
        self,
        split: str = "train",
        num_views: int | tuple[int, int] = 8,
        image_size=224,
        config: SynthConfig | None = None,
        seed: int = 0,
        count: int | None = None,
        scenes_per_item: int = 1,
        device="cpu",
        family: str | None = None,
        tier: str | None = None,
    ):
        super().__init__()
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {tuple(SPLITS)}")
        self.split, self.image_size, self.config = split, image_size, config or SynthConfig()
        self.views = (num_views, num_views) if isinstance(num_views, int) else tuple(num_views)
        self.seed, self.count, self.scenes_per_item = seed, count, scenes_per_item
        self.device, self.family, self.tier = device, family, tier

    def _render(self, seeds, S):
        batch = render_batch(seeds, S, self.image_size, self.device, self.config, self.family, self.tier)
        return batch if self.scenes_per_item > 1 else batch.scene(0)

    def __iter__(self) -> Iterator[SceneSample | SceneBatch]:
        info = torch.utils.data.get_worker_info()
        wid, nw = (0, 1) if info is None else (info.id, info.num_workers)
        lo, hi = self.views
        if self.split == "train":
            rng = Rng(stream_seed(self.seed, 1_000 + wid))
            produced = 0
            while self.count is None or produced < self.count:
                seeds = [rng.randint(0, SPLITS["train"][1] - 1) for _ in range(self.scenes_per_item)]
                yield self._render(seeds, rng.randint(lo, hi))
                produced += 1
        else:
            seeds = split_seeds(self.split, self.count)
            groups = [seeds[i : i + self.scenes_per_item] for i in range(0, len(seeds), self.scenes_per_item)]
            for gi, group in enumerate(groups):
                if gi % nw == wid:
                    S = lo + stream_seed(group[0], 7) % (hi - lo + 1)
                    yield self._render(group, S)
