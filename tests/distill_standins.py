"""Small stand-ins for the distillation framework tests (test code only, never product code).

A two-site VGGT-shaped toy model (per-frame + cross-view blocks, a camera head with refinement
iterations, a per-pixel depth head) built from the real ``Block``/``MultiHeadAttention``, with a
toy SLA conversion (adds ``proj_lin``), toy FP8 fake quantisation, a toy task loss and toy scenes.
They exercise the training loop, hooks, checkpoints, resume, worker protocol and DDP quickly; the
real components replace them where the real modules exist.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lite3r.adapters import hash_state_dict
from lite3r.attention.dense import MultiHeadAttention
from lite3r.models.layers.block import Block
from lite3r.models.sites import AttentionSite
from lite3r.training.distill import BaseModel, Components, sample_rng

PATCH = 4


class ToyModel(nn.Module):
    family = "vggt"
    input_normalization = "none"

    def __init__(self, dim: int = 16, heads: int = 2, depth: int = 2, iters: int = 2) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, PATCH, PATCH)
        self.camera_token = nn.Parameter(torch.randn(1, 1, dim) * 0.1)
        self.frame_blocks = nn.ModuleList(Block(dim, heads, layer_scale_init=0.5) for _ in range(depth))
        self.global_blocks = nn.ModuleList(Block(dim, heads, layer_scale_init=0.5) for _ in range(depth))
        self.cam_trunk = Block(dim, heads, layer_scale_init=0.5)
        self.cam_embed = nn.Linear(9, dim)
        self.cam_out = nn.Linear(dim, 9)
        self.depth_out = nn.Linear(dim, 2 * PATCH * PATCH)
        self.iters = iters

    def attention_sites(self):
        d = len(self.frame_blocks)
        return {
            "frame": AttentionSite("frame", [f"frame_blocks.{i}.attn" for i in range(d)], False, 1, True),
            "global": AttentionSite("global", [f"global_blocks.{i}.attn" for i in range(d)], True, 1, True),
            "camera": AttentionSite("camera", ["cam_trunk.attn"], True, 0, False),
        }

    def trunk_modules(self):
        return ["frame_blocks", "global_blocks"]

    def head_modules(self):
        return ["cam_trunk", "cam_embed", "cam_out", "depth_out"]

    def encode(self, images):
        B, S = images.shape[:2]
        x = self.patch_embed(images.flatten(0, 1)).flatten(2).transpose(1, 2)  # [BS, P, C]
        x = torch.cat([self.camera_token.expand(x.shape[0], -1, -1), x], 1)
        n = x.shape[1]
        for fb, gb in zip(self.frame_blocks, self.global_blocks):
            x = fb(x)
            x = gb(x.reshape(B, S * n, -1), frame_len=n).reshape(B * S, n, -1)
        return x.reshape(B, S, n, -1)

    def forward(self, images):
        B, S, _, H, W = images.shape
        tokens = self.encode(images)
        cam = tokens[:, :, 0]
        pose = torch.zeros(B, S, 9, device=images.device)
        poses = []
        for _ in range(self.iters):
            pose = pose + self.cam_out(self.cam_trunk(cam + self.cam_embed(pose.detach())))
            poses.append(pose)
        patches = self.depth_out(tokens[:, :, 1:]).float()  # [B, S, P, 2·p·p]
        h, w = H // PATCH, W // PATCH
        d = patches.reshape(B, S, h, w, 2, PATCH, PATCH).permute(0, 1, 4, 2, 5, 3, 6).reshape(B, S, 2, H, W)
        return {
            "pose_enc": poses[-1],
            "pose_enc_list": poses,
            "depth": torch.exp(d[:, :, 0]),
            "depth_conf": 1 + torch.exp(d[:, :, 1]),
        }


class ToySLA(MultiHeadAttention):
    """Dense attention + proj_lin(linear attention), the shape of the Lite3R SLA module."""

    def __init__(self, dense: MultiHeadAttention) -> None:
        super().__init__(
            dense.dim,
            dense.num_heads,
            qkv_bias=dense.qkv.bias is not None,
            proj_bias=dense.proj.bias is not None,
            qk_norm=not isinstance(dense.q_norm, nn.Identity),
            rope=dense.rope,
        )
        self.load_state_dict(dense.state_dict())
        self.proj_lin = nn.Linear(self.head_dim, self.head_dim, bias=False)
        nn.init.normal_(self.proj_lin.weight, std=1e-2)

    def attend(self, q, k, v, frame_len=None):
        phi_q, phi_k = F.elu(q) + 1, F.elu(k) + 1
        kv = phi_k.transpose(-1, -2) @ v
        lin = (phi_q @ kv) / (phi_q @ phi_k.sum(-2, keepdim=True).transpose(-1, -2) + 1e-6)
        return F.scaled_dot_product_attention(q, k, v) + self.proj_lin(lin)


def toy_convert(model: nn.Module, conversion: dict) -> nn.Module:
    sites = model.attention_sites()
    for site in conversion["sites"]:
        for name in sites[site].modules:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            setattr(parent, child, ToySLA(getattr(parent, child)))
    return model


class ToyFP8Linear(nn.Linear):
    def forward(self, x):
        def q(t):
            s = t.detach().abs().amax(-1, keepdim=True).clamp_min(1e-8) / 448.0
            return t + ((t / s).clamp(-448, 448).to(torch.float8_e4m3fn).to(t.dtype) * s - t).detach()

        return F.linear(q(x), q(self.weight), self.bias)


def toy_qat(model: nn.Module, qat) -> nn.Module:
    roots = model.trunk_modules() if qat.modules == "trunk" else [""]
    for root in roots:
        for name, m in list(model.get_submodule(root).named_modules()):
            full = f"{root}.{name}" if root else name
            if type(m) is nn.Linear and not any(p in full for p in qat.skip):
                m.__class__ = ToyFP8Linear
    return model


def toy_loss(preds, batch, loss_cfg):
    gt_pose = batch["extrinsics"].flatten(-2)[..., :9]
    cam = sum(
        0.6 ** (len(preds["pose_enc_list"]) - 1 - i) * (p - gt_pose).abs().mean()
        for i, p in enumerate(preds["pose_enc_list"])
    ) / len(preds["pose_enc_list"])
    conf = preds["depth_conf"]
    depth = (conf * (preds["depth"] - batch["depth"]).abs() - 0.2 * torch.log(conf))[batch["valid"]].mean()
    total = loss_cfg.camera_weight * cam + loss_cfg.depth_weight * depth
    return total, {"camera": cam, "depth": depth}


class ToyScenes:
    """Random scenes; micro-batch / scene ``g`` is a pure function of (seed, split, g)."""

    def __init__(self, split: str, seed: int, size: int = 8) -> None:
        self.offset = {"train": 0, "val": 10_000_000, "test": 20_000_000}[split]
        self.seed, self.size = seed, size

    def batch(self, g: int, batch_size: int, views: tuple[int, int]) -> dict[str, torch.Tensor]:
        rng = sample_rng(self.seed, 7, self.offset + g)
        B, S, H = batch_size, int(rng.integers(views[0], views[1] + 1)), self.size
        depth = rng.uniform(1, 3, (B, S, H, H)).astype(np.float32)
        ext = np.tile(np.eye(4, dtype=np.float32)[:3], (B, S, 1, 1))
        ext[..., 3] = rng.normal(0, 0.3, (B, S, 3))
        out = {
            "images": rng.uniform(0, 1, (B, S, 3, H, H)).astype(np.float32),
            "depth": depth,
            "valid": depth > 1.2,
            "extrinsics": ext,
            "intrinsics": np.tile(np.eye(3, dtype=np.float32), (B, S, 1, 1)),
        }
        return {k: torch.from_numpy(v) for k, v in out.items()}


def toy_metrics(preds, batch):
    rel = ((preds["depth"] - batch["depth"]).abs() / batch["depth"])[batch["valid"]].mean()
    return {"depth_absrel": float(rel)}


def toy_base(model_cfg, device) -> BaseModel:
    torch.manual_seed(model_cfg.init_seed)
    model = ToyModel()
    return BaseModel(model, hash_state_dict(model.state_dict()), None)


def components() -> Components:
    return Components(
        load_base=toy_base,
        convert=toy_convert,
        apply_qat=toy_qat,
        task_loss=toy_loss,
        make_dataset=lambda data_cfg, split, seed, device: ToyScenes(split, seed, data_cfg.image_size),
        batch_metrics=toy_metrics,
    )


def micro_vggt_folder(folder):
    """A random small VGGT saved like assets/lite3r-tiny (config.json + model.safetensors): the
    lite3r-tiny stand-in until the trained weights are bundled. 21 tokens per frame at 56 px."""
    from lite3r.models.vggt.config import VGGTConfig
    from lite3r.models.vggt.model import VGGT

    cfg = VGGTConfig.scaled(
        img_size=56,
        embed_dim=32,
        num_heads=2,
        depth=2,
        dino_depth=1,
        dpt_features=16,
        dpt_out_channels=(8, 16, 16, 16),
        point_head=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = VGGT(cfg)
        model.init_weights()
    return model.save_pretrained(folder)


@pytest.fixture(autouse=True)
def restore_threads():
    """Runs set torch's thread count (``threads: 1``: tiny models on 2 shared cores); put it back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def config(tmp_path, **overrides):
    """A small CPU run config for the toy model."""
    from lite3r.training.config import DistillRunConfig

    data = {
        "name": "toy",
        "threads": 1,
        "output_dir": str(tmp_path),
        "seed": 3,
        "device": "cpu",
        "steps": 6,
        "model": {"name": "toy", "random_init": True},
        "conversion": {"sites": ["global"]},
        "optim": {"lr": 1e-2, "warmup_steps": 2},
        "precision": {"autocast": "fp32"},
        "data": {"image_size": 8, "views": [2, 3]},
        "eval": {"every": 0, "scenes": 2, "views": 2},
        "checkpoint": {"every": 2},
    }
    for key, value in overrides.items():
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return DistillRunConfig.from_dict(data)
