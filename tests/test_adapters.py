"""Adapter files: format, atomic writes, base hashes, loading into a converted model."""

from __future__ import annotations

import json

import distill_standins as ds
import pytest
import torch
from distill_standins import restore_threads  # noqa: F401  (autouse fixture)

from lite3r.adapters import (
    apply_adapter_tensors,
    atomic_write_bytes,
    hash_state_dict,
    hash_weights_file,
    load_adapter,
    read_adapter,
    save_adapter,
)
from lite3r.errors import CheckpointError


def _save(path, **kw):
    args = dict(
        conversion={"sites": ["global"]},
        base_model="toy",
        base_hash=hash_state_dict({"w": torch.ones(2)}),
        config={"seed": 1},
        step=7,
    )
    args.update(kw)
    return save_adapter(path, {"a.proj_lin.weight": torch.arange(4.0).reshape(2, 2)}, **args)


def test_round_trip_and_metadata(tmp_path):
    p = _save(tmp_path / "ad.safetensors", precision={"fp8_qat": True})
    a = read_adapter(p)
    assert torch.equal(a.tensors["a.proj_lin.weight"], torch.arange(4.0).reshape(2, 2))
    assert a.conversion == {"sites": ["global"]} and a.base_model == "toy" and a.step == 7
    assert a.precision == {"fp8_qat": True} and a.config == {"seed": 1} and a.num_parameters == 4
    assert not list(tmp_path.glob(".*tmp"))  # no temporary files left behind


def test_hashes():
    sd = {"b": torch.zeros(3, dtype=torch.bfloat16), "a": torch.tensor(1.5)}
    h = hash_state_dict(sd)
    assert h == hash_state_dict(dict(reversed(sd.items())))
    assert h != hash_state_dict({**sd, "a": torch.tensor(1.25)})
    assert h != hash_state_dict({**sd, "b": torch.zeros(3)})  # dtype matters


def test_hash_file(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"abc")
    assert (
        hash_weights_file(f)
        == "sha256-file:" + "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    with pytest.raises(CheckpointError, match="cannot read the base weights"):
        hash_weights_file(tmp_path / "missing.bin")


@pytest.mark.parametrize(
    "content,match",
    [
        (None, "does not exist"),
        (b"garbage", "not a readable safetensors"),
        ("truncate", "not a readable safetensors"),
        ("foreign", "not a Lite3R adapter"),
    ],
)
def test_bad_files_are_checkpoint_errors(tmp_path, content, match):
    p = tmp_path / "ad.safetensors"
    if content == "truncate":
        data = _save(p).read_bytes()
        p.write_bytes(data[: len(data) - 5])
    elif content == "foreign":
        from safetensors.torch import save_file

        save_file({"x": torch.zeros(1)}, str(p))
    elif content is not None:
        p.write_bytes(content)
    with pytest.raises(CheckpointError, match=match) as info:
        read_adapter(p)
    assert str(p) in info.value.message


def test_load_refuses_other_base(tmp_path):
    p = _save(tmp_path / "ad.safetensors")
    other = hash_state_dict({"w": torch.zeros(2)})
    with pytest.raises(CheckpointError, match="different base model") as info:
        load_adapter(ds.ToyModel(), p, other)
    assert "distil a new adapter" in info.value.hint


def test_apply_checks_names_and_shapes(tmp_path):
    model = ds.toy_convert(ds.ToyModel(), {"sites": ["global"]})
    name = "global_blocks.0.attn.proj_lin.weight"
    p = save_adapter(
        tmp_path / "a.safetensors",
        {name: torch.full((8, 8), 0.5)},
        conversion={},
        base_model="toy",
        base_hash=hash_state_dict(model.state_dict()),
    )
    apply_adapter_tensors(model, read_adapter(p))
    assert torch.equal(model.get_parameter(name), torch.full((8, 8), 0.5))
    bad = save_adapter(
        tmp_path / "b.safetensors",
        {name: torch.zeros(4, 4)},
        conversion={},
        base_model="toy",
        base_hash=hash_state_dict(model.state_dict()),
    )
    with pytest.raises(CheckpointError, match="shape"):
        apply_adapter_tensors(model, read_adapter(bad))
    missing = save_adapter(
        tmp_path / "c.safetensors",
        {"x.proj_lin.weight": torch.zeros(1)},
        conversion={},
        base_model="toy",
        base_hash=hash_state_dict(model.state_dict()),
    )
    with pytest.raises(CheckpointError, match="lacks"):
        apply_adapter_tensors(model, read_adapter(missing))


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    p = atomic_write_bytes(tmp_path / "f.json", json.dumps({"v": 1}).encode())

    class Boom(bytes):
        pass

    with pytest.raises(TypeError):
        atomic_write_bytes(p, object())  # fails while writing
    assert json.loads(p.read_text()) == {"v": 1}
    assert [q.name for q in tmp_path.iterdir()] == ["f.json"]


def test_runtime_only_conversion_fields_are_not_saved(tmp_path):
    """complement_states chooses how the same maths runs at inference: not part of what was trained."""
    p = _save(tmp_path / "ad.safetensors", conversion={"sites": ["global"], "complement_states": "stored"})
    assert read_adapter(p).conversion == {"sites": ["global"]}


def _old_adapter(path, model, conversion):
    """An adapter as written before complement_states became a runtime choice (recorded in the file)."""
    from safetensors.torch import save

    tensors = {
        f"global_blocks.{i}.attn.proj_lin.weight": torch.full((8, 8), 0.01 * (i + 1)) for i in range(2)
    }
    metadata = {
        "format": "lite3r-adapter",
        "format_version": "1",
        "base_model": "toy",
        "base_hash": hash_state_dict(model.state_dict()),
        "conversion": json.dumps(conversion, sort_keys=True),
        "precision": "{}",
        "config": "{}",
        "step": "3",
    }
    path.write_bytes(save(tensors, metadata=metadata))
    return path


def _seeded_toy():
    torch.manual_seed(0)
    return ds.ToyModel()


def _complement_states(model):
    return {model.get_submodule(f"global_blocks.{i}.attn").config.complement_states for i in range(2)}


def test_an_adapter_that_recorded_complement_states_runs_the_default_unless_asked(tmp_path, caplog):
    caplog.set_level("INFO", logger="lite3r.adapters")
    p = _old_adapter(
        tmp_path / "old.safetensors", _seeded_toy(), {"sites": ["global"], "complement_states": "stored"}
    )
    model = load_adapter(_seeded_toy(), p, device="cpu")  # the base hash of the same seeded weights
    assert _complement_states(model) == {"summed"}
    assert torch.equal(model.get_parameter("global_blocks.1.attn.proj_lin.weight"), torch.full((8, 8), 0.02))
    assert "complement states summed" in caplog.text and "'stored'" in caplog.text
    assert "not applied" in caplog.text
    caplog.clear()
    asked = load_adapter(_seeded_toy(), p, device="cpu", complement_states="recomputed")
    assert _complement_states(asked) == {"recomputed"}
    assert "complement states recomputed (asked for)" in caplog.text
    with pytest.raises(ValueError, match="complement_states"):
        load_adapter(_seeded_toy(), p, device="cpu", complement_states="fastest")
