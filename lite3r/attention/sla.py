"""Sparse-linear attention (SLA): block-sparse exact attention + linear attention on the rest.

:class:`SparseLinearAttention` subclasses the dense :class:`~lite3r.attention.dense.MultiHeadAttention`
and overrides only :meth:`attend`, so the pretrained qkv / qk-norm / RoPE / proj weights (shared, not
copied, by :meth:`SparseLinearAttention.from_dense`) and their state-dict keys stay as they are. It adds
one head_dim × head_dim ``proj_lin`` (FP32 master weight, shared by the heads) that maps the linear
branch into the output: o = o_s + proj_lin(o_l).

Two modes (``SLAConfig.mode``):

* ``"block"`` (the product): key blocks are selected per query block from pooled q and mean-smoothed
  pooled k; exact softmax runs on the selected blocks; linear attention (ELU+1 or softmax feature map)
  covers the non-selected blocks (SLA-1's complement) or all tokens. Special tokens (camera/register/cls)
  of every frame can be kept attended by all queries. ``backend="triton"`` runs the Triton kernels
  (``lite3r.kernels.sla_*``, forward and backward); ``backend="torch"`` the pure-PyTorch reference
  (CPU). The module never switches backend by itself: the engine chooses and records it.
* ``"token_topk"``: the published Lite3R formulation (method.md A2.4) so the authors' checkpoints
  (``*.attn.proj_lin.weight``, ``*.attn.lam``) load and run as they were trained. PyTorch only, O(N²).

Sequences with fewer than two key blocks (e.g. VGGT's camera trunk, N = S) run dense attention: block
selection is meaningless there, and with the complement branch the result is identical.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from lite3r.attention.dense import MultiHeadAttention
from lite3r.errors import UnsupportedError
from lite3r.kernels.sla_reference import (
    FEATURE_MAPS,
    LINEAR_MODES,
    SLAGeometry,
    add_projected_linear,
    linear_attention_reference,
    sla_attention_reference,
    sla_geometry,
    token_topk_attention,
)

MODES = ("block", "token_topk")
BACKENDS = ("triton", "torch")
PROJ_INITS = ("normal", "zero")
COMPLEMENT_STATES = ("summed", "stored", "recomputed")
KEY_LOADS = ("gather", "tma")  # lite3r.kernels.sla_ops.KEY_LOADS (not imported: no triton needed here)
# head_dim the Triton kernels compile for (power of two, tl.dot needs ≥ 16).
TRITON_HEAD_DIMS = (16, 32, 64, 128)
_BLOCK_SIZES = (16, 32, 64, 128)


@dataclass(frozen=True)
class SLAConfig:
    """Sparse-linear attention settings; fixed at build time and saved with adapters."""

    mode: str = "block"
    # Kept fraction of key blocks per query block ("block") or of keys per query row ("token_topk").
    keep_ratio: float | None = 0.1
    # Alternatively a fixed number of key blocks per query block ("block" only; keep_ratio must be None).
    top_k_blocks: int | None = None
    block_q: int = 128  # query block (Hopper: 128)
    block_k: int = 64  # key block (Hopper: 64)
    feature_map: str = "elu"  # φ of the linear branch: "elu" (ELU+1) or "softmax" over head_dim
    linear: str = "complement"  # linear branch over the non-selected blocks, "all" tokens, or "none"
    proj_init: str = "normal"  # proj_lin init: "normal" (N(0, proj_init_std²)) or "zero"
    proj_init_std: float = 1e-3
    keep_special_tokens: bool = True  # every query attends every frame's camera/register/cls tokens
    eps: float = 1e-6  # linear-branch denominator
    backend: str = "triton"  # "triton" (CUDA kernels) or "torch" (reference, any device)
    # Complement branch, Triton inference: the per-key-block states φ(K_j)ᵀV_j of the prepare pass are
    # "summed" over each query block's non-selected blocks by one batched GEMM before the sparse kernel
    # (its loop then reads no states; extra memory Mq·D² per head), or "stored" and read back per
    # selected block inside the loop (one D×D read per block, subtracted from the totals), or
    # "recomputed" from the K/V tiles the loop already holds (one more small MMA per block, no state
    # memory). Same maths; training always uses stored states.
    complement_states: str = "summed"
    # Triton inference/training: block selection from bounded score tiles ("gemm": a score kernel and a
    # row top-k kernel, faster on the H100) or by the streamed radix-select kernel ("streamed", no
    # workspace). Same table.
    select: str = "gemm"
    # Triton inference: how the sparse forward reads the selected key blocks. "gather": cp.async
    # gathers from q/k/v's own storage (any CUDA GPU, no extra memory); "tma": the prepare pass writes
    # K and V in virtual key order (one more K- and V-sized buffer while the layer runs) and each block
    # arrives by one TMA copy (Hopper, sm90+; 8 % faster at 64 VGGT frames). Training always gathers.
    key_loads: str = "gather"

    def __post_init__(self) -> None:
        def bad(msg: str) -> None:
            raise ValueError(f"SLAConfig: {msg}")

        if self.mode not in MODES:
            bad(f"mode {self.mode!r} is not one of {MODES}")
        if self.backend not in BACKENDS:
            bad(f"backend {self.backend!r} is not one of {BACKENDS}")
        if self.feature_map not in FEATURE_MAPS:
            bad(f"feature_map {self.feature_map!r} is not one of {FEATURE_MAPS}")
        if self.linear not in LINEAR_MODES:
            bad(f"linear {self.linear!r} is not one of {LINEAR_MODES}")
        if self.proj_init not in PROJ_INITS:
            bad(f"proj_init {self.proj_init!r} is not one of {PROJ_INITS}")
        if self.select not in ("gemm", "streamed"):
            bad(f"select {self.select!r} is not one of ('gemm', 'streamed')")
        if self.key_loads not in KEY_LOADS:
            bad(f"key_loads {self.key_loads!r} is not one of {KEY_LOADS}")
        if self.key_loads == "tma" and self.linear == "complement" and self.complement_states != "summed":
            raise UnsupportedError(
                f"TMA key loads need the complement states summed per query block, not {self.complement_states!r}",
                "use complement_states='summed' or key_loads='gather'",
            )
        if self.complement_states not in COMPLEMENT_STATES:
            bad(f"complement_states {self.complement_states!r} is not one of {COMPLEMENT_STATES}")
        if (self.keep_ratio is None) == (self.top_k_blocks is None):
            bad("give exactly one of keep_ratio and top_k_blocks (set keep_ratio=None to use top_k_blocks)")
        if self.keep_ratio is not None and not 0.0 < self.keep_ratio <= 1.0:
            bad(f"keep_ratio {self.keep_ratio} is not in (0, 1]")
        if self.top_k_blocks is not None and self.top_k_blocks < 1:
            bad(f"top_k_blocks {self.top_k_blocks} < 1")
        if self.block_q not in _BLOCK_SIZES or self.block_k not in _BLOCK_SIZES:
            bad(f"block sizes must be in {_BLOCK_SIZES} (got {self.block_q}×{self.block_k})")
        if self.eps <= 0:
            bad("eps must be > 0")
        if self.mode == "token_topk":
            if self.backend != "torch":
                raise UnsupportedError(
                    "the token top-k compatibility mode has no Triton kernel", "use backend='torch'"
                )
            if self.top_k_blocks is not None or self.linear != "all" or self.feature_map != "elu":
                bad(
                    "token_topk mode is fixed: keep_ratio, linear='all', feature_map='elu' (use token_topk())"
                )
            if self.keep_special_tokens:
                bad("token_topk mode treats special tokens like any other (keep_special_tokens=False)")

    @classmethod
    def token_topk(cls, keep_ratio: float = 0.3) -> SLAConfig:
        """The published Lite3R attention (method.md A2.4), for the authors' checkpoints."""
        return cls(
            mode="token_topk",
            keep_ratio=keep_ratio,
            linear="all",
            feature_map="elu",
            keep_special_tokens=False,
            eps=1e-6,
            backend="torch",
        )

    def replace(self, **changes) -> SLAConfig:
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        if self.mode == "token_topk":
            return f"token top-k {self.keep_ratio:.0%} + ELU linear (published Lite3R, torch)"
        kept = f"{self.keep_ratio:.0%} kept" if self.keep_ratio is not None else f"top-{self.top_k_blocks}"
        lin = "no linear" if self.linear == "none" else f"{self.feature_map} linear on {self.linear}"
        # TMA is inference-only: a training forward (gradients) gathers, and the description says so
        tma = self.backend == "triton" and self.key_loads == "tma"
        loads = " · TMA key loads at inference (training gathers)" if tma else ""
        return f"SLA {self.backend} · {kept} · blocks {self.block_q}×{self.block_k} · {lin}{loads}"


def tma_capable(device: torch.device) -> bool:
    """Whether ``device`` can run the TMA key loads: a visible CUDA GPU of compute capability ≥ 9.0."""
    device = torch.device(device)
    return (
        device.type == "cuda"
        and torch.cuda.is_available()
        and torch.cuda.get_device_capability(device) >= (9, 0)
    )


class SparseLinearAttention(MultiHeadAttention):
    """Multi-head attention whose :meth:`attend` is sparse-linear attention (see the module doc)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        qk_norm: bool = False,
        qk_norm_eps: float = 1e-5,
        rope: nn.Module | None = None,
        *,
        config: SLAConfig | None = None,
        special_tokens_per_frame: int = 0,
    ) -> None:
        super().__init__(dim, num_heads, qkv_bias, proj_bias, qk_norm, qk_norm_eps, rope)
        self.config = config or SLAConfig()
        if special_tokens_per_frame < 0:
            raise ValueError("special_tokens_per_frame must be ≥ 0")
        self.special_tokens_per_frame = int(special_tokens_per_frame)
        self._init_sla_parameters()

    def _init_sla_parameters(self, device=None) -> None:
        """proj_lin (FP32 master weight, also when the rest of the model is BF16) and, in the compat mode,
        the authors' unused ``lam`` scalar so their state dicts load strictly."""
        cfg = self.config
        if cfg.linear != "none":
            self.proj_lin = nn.Linear(
                self.head_dim, self.head_dim, bias=False, device=device, dtype=torch.float32
            )
            if self.proj_lin.weight.device.type != "meta":
                with torch.no_grad():
                    if cfg.proj_init == "zero":
                        self.proj_lin.weight.zero_()
                    else:
                        self.proj_lin.weight.normal_(0.0, cfg.proj_init_std)
        else:
            self.proj_lin = None
        if cfg.mode == "token_topk":
            self.lam = nn.Parameter(torch.tensor(0.5, device=device), requires_grad=False)

    @classmethod
    def from_dense(
        cls, attn: MultiHeadAttention, config: SLAConfig, special_tokens_per_frame: int = 0
    ) -> SparseLinearAttention:
        """An SLA module sharing ``attn``'s qkv, qk-norm, proj and RoPE (same objects, same weights)."""
        if not isinstance(attn, MultiHeadAttention) or isinstance(attn, SparseLinearAttention):
            raise TypeError(f"expected a dense MultiHeadAttention, got {type(attn).__name__}")
        qk_norm = not isinstance(attn.q_norm, nn.Identity)
        device = next(attn.parameters()).device
        with torch.device("meta"):
            new = cls(
                attn.dim,
                attn.num_heads,
                qkv_bias=getattr(attn.qkv, "bias", None) is not None,
                proj_bias=getattr(attn.proj, "bias", None) is not None,
                qk_norm=qk_norm,
                qk_norm_eps=getattr(attn.q_norm, "eps", 1e-5) if qk_norm else 1e-5,
                config=config,
                special_tokens_per_frame=special_tokens_per_frame,
            )
        new.qkv, new.q_norm, new.k_norm, new.proj = attn.qkv, attn.q_norm, attn.k_norm, attn.proj
        new.rope = attn.rope
        new.scale = attn.scale
        new.sdpa_backend = attn.sdpa_backend
        new.qk_kernel = attn.qk_kernel
        new._init_sla_parameters(device=device)
        new.train(attn.training)
        return new

    # ------------------------------------------------------------------------------------------
    def geometry(self, n_tokens: int, frame_len: int | None = None) -> SLAGeometry:
        cfg = self.config
        return sla_geometry(
            n_tokens,
            block_q=cfg.block_q,
            block_k=cfg.block_k,
            keep_ratio=cfg.keep_ratio,
            top_k_blocks=cfg.top_k_blocks,
            special_tokens_per_frame=self.special_tokens_per_frame if cfg.keep_special_tokens else 0,
            frame_len=frame_len,
        )

    def attention_path(self, n_tokens: int, frame_len: int | None = None) -> str:
        """The path :meth:`attend` takes for a sequence of ``n_tokens`` (what the engine records)."""
        cfg = self.config
        if cfg.mode == "token_topk":
            return "token-topk-torch"
        if self.geometry(n_tokens, frame_len).n_kblocks < 2:
            return "dense-fallback"
        if self.fused_qk_configured():
            return f"sla-{cfg.backend}-fused-qk"  # at inference; with gradients, sla-triton
        return f"sla-{cfg.backend}"

    def fused_qk_configured(self) -> bool:
        """TMA inference with the fused qk-norm/RoPE kernel: :meth:`forward` then runs
        ``sla_attention_fused_qk`` (the qk kernel pools the queries and writes k in virtual key order)."""
        cfg = self.config
        return (
            cfg.mode == "block"
            and cfg.backend == "triton"
            and cfg.key_loads == "tma"
            and self.qk_kernel == "triton"
        )

    def forward(self, x: torch.Tensor, pos=None, frame_len: int | None = None) -> torch.Tensor:
        """The dense module's forward (qkv → qk-norm/RoPE → :meth:`attend` → proj), except at
        inference on the fused-qk TMA path (:meth:`attention_path` says which), where the qk kernel also
        produces the pooled queries and the virtual-order keys, so the SLA prepare pass reads neither
        q nor k again (~180 MB less traffic per layer at 32 VGGT frames)."""
        B, N, C = x.shape
        if (
            not self.fused_qk_configured()
            or self.geometry(N, frame_len).n_kblocks < 2
            or self._records_autograd(x)
        ):
            return super().forward(x, pos, frame_len)
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        o = self.attend_fused_qk(q, k, v, pos, frame_len)
        return self.proj(o.transpose(1, 2).reshape(B, N, C))

    def _records_autograd(self, x: torch.Tensor) -> bool:
        """Whether autograd would record this call (a trainable parameter, or an input that needs
        gradients): the fused-qk kernels have no backward, so such calls run project_qkv + attend."""
        return torch.is_grad_enabled() and (
            x.requires_grad or any(p.requires_grad for p in self.parameters())
        )

    def attend_fused_qk(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos=None, frame_len: int | None = None
    ) -> torch.Tensor:
        """qk-norm/RoPE and attention from the qkv projection's q, k, v [B, H, N, D] (before the norm),
        inference only: the path :meth:`forward` takes when :meth:`attention_path` ends in "fused-qk".
        The same result as ``attend(*project_qkv(x, pos))``: the pooled queries are the same sums of
        the same stored values (bit-identical outputs at VGGT shapes in the SLA bench)."""
        cfg = self.config
        if not self.fused_qk_configured():
            raise UnsupportedError(
                "the fused-qk SLA path needs mode='block', backend='triton', key_loads='tma' and the "
                f"fused qk kernel (set_qk_kernel(model, 'triton')); this module has {cfg.describe()}, "
                f"qk_kernel={self.qk_kernel!r}",
                "call attend(*project_qkv(x, pos)) instead",
            )
        geom = self.geometry(q.shape[2], frame_len)
        if geom.n_kblocks < 2:
            raise UnsupportedError(
                f"{q.shape[2]} tokens make {geom.n_kblocks} key block: the module uses dense attention here",
                "call attend(*project_qkv(x, pos)) instead",
            )
        self._check_triton_inputs(v)
        from lite3r.kernels.sla_ops import sla_attention_fused_qk

        weight = None if self.proj_lin is None else self.proj_lin.weight
        return sla_attention_fused_qk(
            q, k, v, *self._qk_kernel_args(pos), weight, geom, select=cfg.select, **self._branch_kwargs()
        )

    def _branch_kwargs(self) -> dict:
        """Feature map, linear branch, eps and softmax scale, as every SLA entry point takes them."""
        cfg = self.config
        return dict(feature=cfg.feature_map, linear=cfg.linear, eps=cfg.eps, scale=self.scale)

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, frame_len: int | None = None
    ) -> torch.Tensor:
        cfg = self.config
        weight = None if self.proj_lin is None else self.proj_lin.weight
        self._check_master_weight(weight)
        if cfg.mode == "token_topk":
            return token_topk_attention(q, k, v, weight, cfg.keep_ratio, cfg.eps, self.scale)
        geom = self.geometry(q.shape[2], frame_len)
        if geom.n_kblocks < 2:
            return self._dense_fallback(q, k, v, weight, geom)
        kwargs = self._branch_kwargs()
        if cfg.backend == "torch":
            return sla_attention_reference(q, k, v, weight, geom, **kwargs)
        self._check_triton_inputs(q)
        from lite3r.kernels.sla_ops import sla_attention

        return sla_attention(
            q,
            k,
            v,
            weight,
            geom,
            complement_states=cfg.complement_states,
            select=cfg.select,
            key_loads=cfg.key_loads,
            **kwargs,
        )

    def _dense_fallback(self, q, k, v, weight, geom: SLAGeometry) -> torch.Tensor:
        o = super().attend(q, k, v)
        if self.config.linear != "all":
            return o  # one key block is always selected: the complement is empty
        o_l = linear_attention_reference(q, k, v, None, geom, self.config.feature_map, "all", self.config.eps)
        return add_projected_linear(o, o_l, weight).to(o.dtype)

    def _check_master_weight(self, weight: torch.Tensor | None) -> None:
        if (
            weight is not None
            and self.training
            and weight.requires_grad
            and torch.is_grad_enabled()
            and weight.dtype != torch.float32
        ):
            raise UnsupportedError(
                f"proj_lin has a {weight.dtype} master weight; training needs FP32 masters",
                "cast the model to BF16 only for inference; train in FP32 under autocast",
            )

    def _check_triton_inputs(self, q: torch.Tensor) -> None:
        try:
            from lite3r.kernels.sla_ops import kernels_interpreted
        except ImportError as e:  # no triton in this build
            raise UnsupportedError(
                f"the SLA Triton kernels cannot be imported ({e})", "use SLAConfig(backend='torch')"
            ) from e
        if q.device.type != "cuda" and not kernels_interpreted():
            raise UnsupportedError(
                f"SLA backend 'triton' needs CUDA tensors, got {q.device.type}",
                "use SLAConfig(backend='torch') on CPU",
            )
        if self.head_dim not in TRITON_HEAD_DIMS:
            raise UnsupportedError(
                f"the SLA Triton kernels support head_dim {TRITON_HEAD_DIMS}, not {self.head_dim}",
                "use SLAConfig(backend='torch')",
            )
        if q.dtype not in (torch.bfloat16, torch.float16, torch.float32):
            raise UnsupportedError(f"the SLA Triton kernels do not take {q.dtype} inputs")
        if self.config.key_loads == "tma" and q.device.type == "cuda" and not tma_capable(q.device):
            cap = torch.cuda.get_device_capability(q.device)
            raise UnsupportedError(
                f"TMA key loads need a Hopper-class GPU (compute capability ≥ 9.0), this one is {cap[0]}.{cap[1]}",
                "use SLAConfig(key_loads='gather')",
            )

    def extra_repr(self) -> str:
        return f"{self.config.describe()}, special_tokens_per_frame={self.special_tokens_per_frame}"


def count_proj_lin_parameters(module: nn.Module) -> int:
    """Trainable parameters SLA adds (proj_lin) in ``module``."""
    return sum(
        m.proj_lin.weight.numel()
        for m in module.modules()
        if isinstance(m, SparseLinearAttention) and m.proj_lin is not None
    )


def set_sla_backend(model: nn.Module, backend: str) -> int:
    """Switch every SLA module of ``model`` to ``backend`` (e.g. after moving it to another device);
    returns how many were changed. The engine calls this explicitly and records the result."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown SLA backend {backend!r}; choose one of {BACKENDS}")
    n = 0
    for m in model.modules():
        if isinstance(m, SparseLinearAttention) and m.config.mode == "block":
            m.config = m.config.replace(backend=backend)
            n += 1
    return n


__all__ = [
    "BACKENDS",
    "MODES",
    "SLAConfig",
    "SparseLinearAttention",
    "count_proj_lin_parameters",
    "set_sla_backend",
    "tma_capable",
]
