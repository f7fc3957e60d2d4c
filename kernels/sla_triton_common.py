"""Triton helpers shared by the SLA kernels: virtual key order, feature maps and their derivatives, and
the autotuning policy.

The conventions (virtual key order, blocks, feature maps) are documented in ``sla_reference.py``.
Integer codes passed as ``tl.constexpr``: feature map 0 = ELU+1, 1 = softmax over the head dim;
linear branch 0 = none, 1 = all tokens, 2 = complement of the selected blocks.
"""

from __future__ import annotations

import triton
import triton.language as tl

FEATURE_CODES = {"elu": 0, "softmax": 1}
LINEAR_CODES = {"none": 0, "all": 1, "complement": 2}


def effective_linear_code(linear: str, geom) -> int:
    """The linear branch's code for ``geom`` (an ``SLAGeometry``): 0 when every block is selected under
    the complement branch (the complement is empty, so o_l is exactly zero)."""
    code = LINEAR_CODES[linear]
    return 0 if code == 2 and geom.topk >= geom.n_kblocks else code


def augmented_states(s_tot, head_dim: int) -> bool:
    """Whether complement sums per query block come in the augmented layout [B, H, Mq, D² + D] (each row
    S_i's entries then z_i's: ``sla_linear_domain.complement_sums_augmented``)."""
    return s_tot.dim() == 4 and s_tot.shape[-1] == head_dim * head_dim + head_dim


# Integer arguments that only size loops, grids and masks. Triton would otherwise specialise every
# launch on each of them (value 1, divisibility by 16) and compile every autotune config again for each
# new combination, i.e. for many sequence lengths; none of them feeds a vectorised address.
SIZE_ARGS = (
    "H", "N", "n_qblocks", "n_kblocks", "n_srows", "topk", "n_forced", "n_chunks", "qb_per_prog", "kb_per_prog",
    "n_special", "frame_len", "n_special_total",
)  # fmt: skip

# Autotuning is keyed on the compile-time variant (head_dim, blocks, feature map, linear branch, …) and
# the tensor dtypes, never on the sequence length, plus one coarse work bucket: the number of key blocks
# a program loops over (≤ 16, ≤ 128, more). Each bucket is one more ~1 s benchmark, not a compile
# (every bucket's tuner wraps the same jitted kernel, which owns the compiled binaries).
WORK_BUCKET_LIMITS = (16, 128)


def work_bucket(trips: float) -> int:
    return sum(trips > limit for limit in WORK_BUCKET_LIMITS)


def use_autotuner(x) -> bool:
    """Launch through the autotuner (CUDA); the interpreter runs the plain kernel. Launchers call this
    through the module so a CPU test can route interpreted launches through the autotuners."""
    return x.is_cuda


def kernel_runs_on(kernel, x) -> bool:
    """Whether the jitted ``kernel`` can run on ``x``'s device: CUDA, or CPU when it was built by the
    Triton interpreter (the kernels' ``runs_here``; elsewhere their callers use the PyTorch path)."""
    return x.is_cuda or type(kernel).__name__ == "InterpretedFunction"


def forward_launch(tuners: list, plain, x, topk: int, pair: int | None):
    """(kernel, meta) of a forward launch: the work bucket's autotuner on CUDA (PAIR is tuned), else the
    plain kernel with ``pair`` key blocks per loop step (1 or 2; default 1)."""
    if use_autotuner(x):
        if pair is not None:
            raise ValueError("pair is an autotuned parameter; give it only to the plain (interpreted) kernel")
        return tuners[work_bucket(topk)], {}
    if pair not in (None, 1, 2):
        raise ValueError(f"pair must be 1 or 2 (key blocks per loop step), got {pair}")
    return plain, {"PAIR": pair or 1}


def _pick(warps_stages, **meta):
    """Configs from (num_warps, num_stages[, maxnreg]) tuples; ``meta``: constexpr values they all set."""
    return [
        triton.Config(dict(meta), num_warps=c[0], num_stages=c[1], maxnreg=(c[2] if len(c) > 2 else None))
        for c in warps_stages
    ]


def config_key(c) -> tuple:
    return (c.num_warps, c.num_stages, c.maxnreg, tuple(sorted(c.kwargs.items())))


# (num_warps, num_stages[, maxnreg]) per kernel, from the sm_90a compile report (sla_compile_check): at
# head_dim 64 every kernel with a linear branch spills at 4 warps (its head_dim² state lives in
# registers), at 128 everything spills at 4 warps and 16 warps is worse (128-register cap); the
# sparse-only forward is the FlashAttention case where 4 warps fits. Registers decide occupancy: at 8
# warps, ≤ 128 registers per thread lets two programs share an SM (the sparse-only forward needs 125,
# the fused forward 138-182 once q is re-read for the epilogue), so the d64 forward also tries a
# 128-register cap (ptxas then spills ≤ 56 bytes at inference, 100 for training; the tuner decides).
# The backward kernels run their linear branch before their loop and get the complement states summed
# (sla_linear_domain), so the loops hold only the sparse branch. d64 dQ: 185 registers uncapped, 0 bytes
# spilled under a 168 cap, 72 (prologue only) under 128. dK/dV walks each query block in M_SPLIT row
# slices (autotuned) to shrink its [BLOCK_N, BLOCK_M] score tiles: d64 at 8 warps 255 registers whole,
# 0 spills at 168 with 2 slices and at 128 with 4 (4 warps, 4 slices: 156); d128 spills 248 bytes
# whole, none with 2 or 4 slices.
CONFIGS = {
    # PAIR = 2: the loop takes two selected key blocks per step (a 128-deep key tile at 64-token blocks).
    "forward": {
        "small": _pick([(4, 3), (8, 3)], PAIR=1),  # head_dim ≤ 32
        "d64": (
            _pick([(8, 2), (8, 3), (8, 4), (8, 3, 128), (8, 4, 128)], PAIR=1)
            + _pick([(8, 2), (8, 3), (8, 3, 128)], PAIR=2)
        ),
        "d64_sparse": _pick([(4, 3), (8, 3), (8, 4)], PAIR=1) + _pick([(8, 2), (8, 3)], PAIR=2),
        "d128": _pick([(8, 2), (8, 3)], PAIR=1),
    },
    # The TMA forward (sla_forward_tma, inference only): PAIR = 2 issues two QKᵀ and two P·V MMAs per
    # step on two 64-key TMA boxes. At 8 warps the 128-register cap (two programs per SM) is what makes
    # it faster than the gather kernel (sla_tma_probe: 438 vs 405 TFLOP/s at 64 frames; uncapped 315).
    "forward_tma": {
        "small": _pick([(4, 3), (8, 3)], PAIR=1),
        "d64": _pick([(8, 3, 128), (8, 2, 128), (4, 3)], PAIR=2) + _pick([(8, 3, 128)], PAIR=1),
        "d64_sparse": _pick([(8, 3, 128), (8, 2, 128), (4, 3)], PAIR=2) + _pick([(8, 3, 128)], PAIR=1),
        "d128": _pick([(8, 2), (8, 3)], PAIR=1),
    },
    "backward_dq": {
        "small": _pick([(4, 3), (8, 3)]),
        "d64": _pick([(8, 2), (8, 3), (8, 3, 168), (8, 3, 128)]),
        "d128": _pick([(8, 2), (8, 3)]),
    },
    "backward_dkdv": {
        "small": _pick([(4, 3), (8, 3)], M_SPLIT=1),
        "d64": (
            _pick([(8, 2), (8, 3)], M_SPLIT=1)
            + _pick([(8, 3, 168)], M_SPLIT=2)
            + _pick([(8, 3, 128), (4, 3)], M_SPLIT=4)
        ),
        "d128": _pick([(8, 3)], M_SPLIT=1) + _pick([(8, 3)], M_SPLIT=2) + _pick([(8, 3)], M_SPLIT=4),
    },
}


def config_class(head_dim: int, linear: int = 1) -> str:
    if head_dim <= 32:
        return "small"
    if head_dim <= 64:
        return "d64" if linear else "d64_sparse"
    return "d128"


def all_configs(kernel: str) -> list:
    """Every config of ``kernel`` (the autotuner prunes them per launch with :func:`prune_for`)."""
    seen = {}
    for cfgs in CONFIGS[kernel].values():
        for c in cfgs:
            seen.setdefault(config_key(c), c)
    return list(seen.values())


def _fits(c, block_m) -> bool:
    """A query-row split leaves slices of at least 32 rows (an MMA dimension) that tile BLOCK_M."""
    split = c.kwargs.get("M_SPLIT", 1)
    return split == 1 or (block_m is not None and block_m % split == 0 and block_m // split >= 32)


def prune_for(kernel: str):
    """early_config_prune: keep the configs of the launch's head_dim (and linear-branch) class."""
    table = CONFIGS[kernel]

    def prune(configs, named_args, **kwargs):
        head_dim = kwargs.get("HEAD_DIM", named_args.get("HEAD_DIM"))
        linear = kwargs.get("LINEAR", named_args.get("LINEAR", 1))
        block_m = kwargs.get("BLOCK_M", named_args.get("BLOCK_M"))
        cls = config_class(int(head_dim), int(linear))
        wanted = {config_key(c) for c in table.get(cls, table["d64"])}
        return [c for c in configs if config_key(c) in wanted and _fits(c, block_m)]

    return prune


def bucketed_autotune(kernel_fn, kernel: str, key: list[str]) -> list:
    """One autotuner per work bucket over the same jitted kernel (see WORK_BUCKET_LIMITS)."""
    return [
        triton.autotune(
            configs=all_configs(kernel), key=key, prune_configs_by={"early_config_prune": prune_for(kernel)}
        )(kernel_fn)
        for _ in range(len(WORK_BUCKET_LIMITS) + 1)
    ]


def tuning_report(tuners: list) -> dict:
    """{bucket: {autotune key: chosen config}} of a bucketed_autotune list (for benchmark records)."""
    out = {}
    for bucket, tuner in enumerate(tuners):
        if tuner.cache:
            out[str(bucket)] = {str(k): str(c) for k, c in tuner.cache.items()}
    return out


@triton.jit
def virtual_to_physical(v, n_special, frame_len, n_special_total, HAS_SPECIAL: tl.constexpr):
    """Physical token index of virtual key positions ``v``: all frames' special tokens come first."""
    if HAS_SPECIAL:
        is_special = v < n_special_total
        vs = tl.where(is_special, v, 0)
        f_s = vs // n_special
        phys_s = f_s * frame_len + (vs - f_s * n_special)
        p = tl.where(is_special, 0, v - n_special_total)
        patches = frame_len - n_special
        f_p = p // patches
        phys_p = f_p * frame_len + n_special + (p - f_p * patches)
        return tl.where(is_special, phys_s, phys_p)
    else:
        return v


@triton.jit
def physical_to_virtual(r, n_special, frame_len, n_special_total, HAS_SPECIAL: tl.constexpr):
    """Virtual key position of physical tokens ``r``: the inverse of :func:`virtual_to_physical`."""
    if HAS_SPECIAL:
        f = r // frame_len
        t = r - f * frame_len
        patch = n_special_total + f * (frame_len - n_special) + (t - n_special)
        return tl.where(t < n_special, f * n_special + t, patch)
    else:
        return r


def fast_patch_map(geom) -> bool:
    """Whether the kernels may map patch-only key blocks per block (``patch_pair_rows``): there are
    special tokens to skip, a key block spans at most two frames, and the per-block division is exact
    (its multiply-shift form needs < 2^24 tokens and ≤ 2^16 patch tokens per frame)."""
    patches = geom.frame_len - geom.n_special
    return geom.n_special > 0 and geom.block_k <= patches <= 1 << 16 and geom.n_tokens < 1 << 24


@triton.jit
def patch_pair_rows(j0, j1, n_special, frame_len, n_special_total, BLOCK_N: tl.constexpr, PAIR: tl.constexpr):
    """Physical rows of the virtual key columns of block j0 (and j1 beside it when PAIR = 2), for blocks
    that hold only patch tokens: ``virtual_to_physical`` with the divisions done once per block instead
    of per column. Valid when a block spans at most two frames (patch tokens per frame ≥ BLOCK_N, which
    the launcher checks); the per-column work is one compare and a few adds (issue #3: the divisions
    cost the loop ~8 % of its TFLOP/s at VGGT shapes, ``benchmarks/probes/sla_layout_probe.py``)."""
    c = tl.arange(0, PAIR * BLOCK_N)
    patches = frame_len - n_special
    # floor(start / patches) as a multiply-shift by M = ceil(2^40 / patches) (loop-invariant): exact for
    # 0 ≤ start < 2^24 and 16 ≤ patches ≤ 2^16 (fast_patch_map checks both), and it keeps the integer
    # division's reciprocal (I2F + MUFU.RCP, on the MUFU/MIO path the exponentials queue on) out of the loop.
    magic = ((1 << 40) + patches.to(tl.int64) - 1) // patches
    start0 = j0 * BLOCK_N - n_special_total  # patch index of the block's first column
    f0 = ((start0.to(tl.int64) * magic) >> 40).to(tl.int32)
    if PAIR == 2:
        start1 = j1 * BLOCK_N - n_special_total
        f1 = ((start1.to(tl.int64) * magic) >> 40).to(tl.int32)
        first = c < BLOCK_N
        p = tl.where(first, start0, start1 - BLOCK_N) + c
        frame = tl.where(first, f0, f1)
    else:
        p = start0 + c
        frame = f0
    frame += (p >= (frame + 1) * patches).to(tl.int32)
    return p + n_special * (frame + 1)


@triton.jit
def feature_map(x, FEATURE: tl.constexpr):
    """φ(x) in float32 for x [R, D]: ELU+1 (= x+1 for x>0, exp(x) otherwise) or softmax over D."""
    if FEATURE == 0:
        return tl.where(x > 0, x + 1.0, tl.exp(x))
    else:
        e = tl.exp(x - tl.max(x, axis=1)[:, None])
        return e / tl.sum(e, axis=1)[:, None]


@triton.jit
def feature_map_backward(phi, dphi, FEATURE: tl.constexpr):
    """dL/dx from dL/dφ, given φ(x) only (x need not stay live): for ELU+1, x > 0 exactly when φ > 1
    (x+1 rounding to 1 and x = 0 both have derivative φ = 1)."""
    if FEATURE == 0:
        return tl.where(phi > 1.0, dphi, dphi * phi)
    else:
        return phi * (dphi - tl.sum(dphi * phi, axis=1)[:, None])


@triton.jit
def load_linear_state(S, Z, blk, dot_dtype, HEAD_DIM: tl.constexpr):
    """Block ``blk``'s head_dim × head_dim state in ``dot_dtype`` (the MMA input dtype: converted straight
    from its storage dtype, never widened to float32 in registers) and its head_dim vector in float32."""
    d = tl.arange(0, HEAD_DIM)
    s = tl.load(S + (blk * HEAD_DIM + d[:, None]) * HEAD_DIM + d[None, :]).to(dot_dtype)
    z = tl.load(Z + blk * HEAD_DIM + d).to(tl.float32)
    return s, z


@triton.jit
def linear_input_grad(phi, a, state, dphi_extra, FEATURE: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """dL/dx of a linear-attention input x [R, D] with φ(x) = ``phi`` [R, D], whose feature gradient is
    a·stateᵀ + dphi_extra: the shared tail of both backward kernels (queries: a = g/den, state = S_i,
    extra = dden·z_iᵀ; keys: a = V_j, state = dS_j, extra = dz_j). ``a`` and ``state`` come in the dot
    dtype."""
    dphi = tl.dot(a, tl.trans(state), input_precision=DOT_PRECISION) + dphi_extra
    return feature_map_backward(phi, dphi, FEATURE)
