"""The ``global_rope`` option: RoPE in the cross-frame blocks (VGGT) or content-only cross-frame attention."""

from __future__ import annotations

import pytest
import torch

from lite3r.errors import InputError
from lite3r.models.vggt.attention_capture import GlobalQKCapture
from lite3r.models.vggt.config import VGGTConfig
from lite3r.training.tiny import build_tiny
from lite3r.training.train_tiny import EXIT_OK, TinyTrainConfig, build_parser, train


def _qk(model, images):
    with torch.no_grad(), GlobalQKCapture(model, (0,), grad_only=False) as cap:
        model(images)
        q, k, _ = cap.pop()[0]
    return q, k


def _unrotated_qk(model, images):
    """q, k of global block 0 from its input, qk-normed but not rotated."""
    seen = {}
    attn = model.aggregator.global_blocks[0].attn

    def keep_input(module, args, kwargs):
        seen["x"] = args[0]

    h = attn.register_forward_pre_hook(keep_input, with_kwargs=True)
    with torch.no_grad():
        model(images)
        h.remove()
        x = seen["x"]
        B, N, _ = x.shape
        qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        return attn.q_norm(qkv[0]), attn.k_norm(qkv[1])


def test_global_blocks_see_positions_only_with_global_rope():
    images = torch.rand(1, 3, 3, 56, 56)
    on, off = build_tiny("micro", seed=0).eval(), build_tiny("micro", seed=0, global_rope=False).eval()
    assert on.state_dict().keys() == off.state_dict().keys()  # an option, not new weights
    off.load_state_dict(on.state_dict())
    q, k = _qk(off, images)
    q0, k0 = _unrotated_qk(off, images)
    torch.testing.assert_close(q, q0.to(q.dtype), rtol=0, atol=0)
    torch.testing.assert_close(k, k0.to(k.dtype), rtol=0, atol=0)
    q, _ = _qk(on, images)
    q0, _ = _unrotated_qk(on, images)
    assert (q - q0.to(q.dtype)).abs().max() > 1e-3  # RoPE rotates the patch queries
    with torch.no_grad():  # the frame blocks keep RoPE either way: only the global blocks differ
        assert not torch.equal(on(images)["depth"], off(images)["depth"])


def test_config_round_trip_and_older_configs_keep_rope():
    cfg = VGGTConfig.scaled(global_rope=False)
    assert VGGTConfig.from_dict(cfg.to_dict()).aggregator.global_rope is False
    d = VGGTConfig.scaled().to_dict()
    del d["aggregator"]["global_rope"]  # a config.json written before the option
    assert VGGTConfig.from_dict(d).aggregator.global_rope is True
    assert VGGTConfig.vggt_1b().aggregator.global_rope is True


def test_train_tiny_option_and_resume_keeps_it(tmp_path):
    args = build_parser().parse_args(["--out", "x", "--no-global-rope"])
    assert args.global_rope is False
    assert TinyTrainConfig.from_dict({k: v for k, v in TinyTrainConfig().to_dict().items()
                                      if k != "global_rope"}).global_rope is True  # fmt: skip
    cfg = TinyTrainConfig(preset="micro", views=(2, 2), views_per_step=2, total_steps=1, warmup_steps=1,
                          supersample=1, eval_every=0, eval_scenes=0, global_rope=False)  # fmt: skip
    out = tmp_path / "run"
    assert train(cfg, out, device="cpu", quiet=True) == EXIT_OK
    from lite3r.models.vggt.model import VGGT

    assert VGGT.from_pretrained(out / "lite3r-tiny").config.aggregator.global_rope is False
    with pytest.raises(InputError, match="keeps its trajectory"):
        train(TinyTrainConfig(global_rope=True), out, device="cpu", resume=True, quiet=True,
              explicit={"global_rope"})  # fmt: skip
