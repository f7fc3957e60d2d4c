"""What the end-to-end probes share: the model/variant options and one engine forward on random
images (``model_forward``: trunk, cameras, depth heads in frame chunks), so every probe measures the
same path as ``lite3r bench``."""

from __future__ import annotations

import argparse
import functools
import os
from pathlib import Path

from lite3r.eval.bench import make_inputs, model_forward
from lite3r.eval.variants import ModelSource, build_reconstructor, parse_variant


def add_model_arguments(ap: argparse.ArgumentParser, frames: int | None = 8) -> None:
    """--model, --variant, --image-size, --out, and --frames with a default (None: leave it out)."""
    ap.add_argument("--model", default="vggt-1b")
    ap.add_argument("--variant", required=True)
    if frames is not None:
        ap.add_argument("--frames", type=int, default=frames)
    ap.add_argument("--image-size", type=int, default=518)
    ap.add_argument("--out", default=None)


def output_dir(args, sub: str) -> Path:
    return Path(args.out or os.environ.get("OUT") or "benchmarks/results") / sub


def build(args, device: str = "cuda"):
    """(variant spec, Reconstructor) for ``--model`` with random weights and ``--variant``."""
    variant = parse_variant(args.variant)
    return variant, build_reconstructor(ModelSource(args.model, None, random_weights=True), variant, device)


def forward_fn(rc, frames: int, image_size: int, device: str = "cuda"):
    """A no-argument callable: one engine forward (cameras + depth) on fixed random images."""
    images = make_inputs(frames, (image_size, image_size), rc.model.input_normalization, device, 0)
    return functools.partial(model_forward, rc, images, "cameras-depth")
