"""Bundled data: the lite3r-tiny model and the demo scene (installed as ``lite3r.assets``)."""

from importlib.resources import files


def asset_path(*parts: str):
    """Path of a bundled asset, valid for a source checkout, an installed wheel and a frozen app."""
    return files(__name__).joinpath(*parts)
