"""Shared pytest set-up: markers that skip GPU/GL tests where they cannot run, and data paths."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
DATA = TESTS / "data"
PARITY_DIR = DATA / "parity"  # a copy of ../shared/parity (hashes checked in test_parity_data.py)
PHOTOS_DIR = DATA / "photos"
REPO = TESTS.parent

os.environ.setdefault("QT_API", "pyside6")

# Triton decides at import time whether kernels (and its own tl.max/tl.sum) are compiled or interpreted,
# and torch._inductor imports triton early; on machines without an NVIDIA GPU every Triton kernel test
# runs in the interpreter, so set it before anything can import triton.
if not (os.path.exists("/dev/nvidiactl") or shutil.which("nvidia-smi")):
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _cuda_capability():
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_capability()


def pytest_collection_modifyitems(config, items):
    cap = _cuda_capability()
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (run benchmarks/gpu_check.sh on the device)")
    skip_fp8 = pytest.mark.skip(reason="needs FP8 tensor cores (SM89+)")
    for item in items:
        if "gpu" in item.keywords and cap is None:
            item.add_marker(skip_gpu)
        if "hopper" in item.keywords and (cap is None or cap < (8, 9)):
            item.add_marker(skip_fp8)


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    return PARITY_DIR


@pytest.fixture(scope="session")
def photos_dir() -> Path:
    return PHOTOS_DIR


@pytest.fixture
def one_torch_thread():
    """One intra-op thread for the test: CPU training runs are reproducible and do not fight the
    other pytest workers for the two cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
