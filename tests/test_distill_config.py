"""Run config: YAML round trip, strict keys and types, loud validation."""

from __future__ import annotations

import pytest

from lite3r.errors import InputError
from lite3r.training.config import DistillRunConfig


def test_defaults_round_trip_through_yaml(tmp_path):
    cfg = DistillRunConfig()
    path = cfg.save(tmp_path / "run.yaml")
    again = DistillRunConfig.load(path)
    assert again == cfg
    assert again.conversion == {"sites": ["global"], "keep_ratio": 0.1}
    assert again.qat.skip == ["proj_lin"] and again.unfreeze == []
    assert again.optim.betas == (0.9, 0.999)


def test_partial_yaml_and_yaml11_floats(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("steps: 5\noptim:\n  lr: 1e-4\n  eps: 1.0e-6\ndata:\n  views: [2, 4]\n")
    cfg = DistillRunConfig.load(p)
    assert cfg.steps == 5 and cfg.optim.lr == 1e-4 and cfg.data.views == (2, 4)
    assert cfg.model.name == "lite3r-tiny"


@pytest.mark.parametrize(
    "text,match",
    [
        ("stepz: 5\n", "unknown setting.*stepz"),
        ("optim:\n  learning_rate: 1\n", "optim.learning_rate"),
        ("steps: many\n", "steps must be an integer"),
        ("qat:\n  enabled: 1\n", "qat.enabled must be true or false"),
        ("steps: 0\n", "steps: must be ≥ 1"),
        ("eval:\n  split: train\n", "held-out"),
        ("data:\n  source: dtu\n", "data.root"),
        ("precision:\n  autocast: fp16\n", "bf16 or fp32"),
        ("- a\n- b\n", "mapping"),
        ("a: [\n", "not valid YAML"),
    ],
)
def test_bad_configs_name_the_file_and_key(tmp_path, text, match):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(InputError, match=match) as info:
        DistillRunConfig.load(p)
    assert str(p) in info.value.message


def test_missing_file():
    with pytest.raises(InputError, match="cannot read the config"):
        DistillRunConfig.load("/nonexistent/run.yaml")


def test_lite3r_train_prints_a_loadable_default_config(tmp_path, capsys):
    from lite3r.cli import main

    assert main(["train", "--print-config"]) == 0
    path = tmp_path / "run.yaml"
    path.write_text(capsys.readouterr().out)
    assert DistillRunConfig.load(path) == DistillRunConfig()
    assert main(["train"]) == 2  # no --config: a user error, not a traceback
    assert "needs --config" in capsys.readouterr().err
