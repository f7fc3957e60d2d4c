"""Evaluation datasets: MVSNet formats, BlendedMVS, DTU (training / test layouts, DTU64), SynthMV.

``open_dataset(name, root, **options)`` builds one by name (the names the ``lite3r eval`` CLI takes).
"""

from __future__ import annotations

from lite3r.errors import InputError
from lite3r.eval.datasets.base import EvalDataset, Sample

DATASETS = {
    "blendedmvs": "lite3r.eval.datasets.blendedmvs:BlendedMVS",
    "dtu_train": "lite3r.eval.datasets.dtu:DTUTrain",
    "dtu_test": "lite3r.eval.datasets.dtu:DTUTest",
    "dtu64": "lite3r.eval.datasets.dtu:DTU64",
    "synthmv": "lite3r.eval.datasets.synthetic:SynthMV",
}


def dataset_class(name: str) -> type[EvalDataset]:
    import importlib

    if name not in DATASETS:
        raise InputError(f"unknown dataset {name!r}", f"choose one of {', '.join(DATASETS)}")
    module, cls = DATASETS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def open_dataset(name: str, root=None, **options) -> EvalDataset:
    """Open ``name`` at ``root`` with dataset-specific ``options`` (None values are dropped)."""
    cls = dataset_class(name)
    opts = {k: v for k, v in options.items() if v is not None}
    if root is None and name != "synthmv":
        raise InputError(f"dataset {name} needs a root folder", "pass --root PATH")
    return cls(root, **opts)


__all__ = ["DATASETS", "EvalDataset", "Sample", "dataset_class", "open_dataset"]
