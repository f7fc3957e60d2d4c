"""Every Python package folder is installed, inside the lite3r namespace (no top-level `kernels`)."""

import tomllib

from conftest import REPO

MAPPING_ROOTS = {
    "lite3r": "lite3r",
    "app": "lite3r.app",
    "kernels": "lite3r.kernels",
    "training": "lite3r.training",
    "assets": "lite3r.assets",
}


def test_all_package_folders_are_listed():
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    found = set()
    for root, name in MAPPING_ROOTS.items():
        for init in (REPO / root).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / root)
            found.add(".".join([name, *rel.parts]) if rel.parts else name)
    assert found == listed, f"missing: {sorted(found - listed)}, stale: {sorted(listed - found)}"
    for root, name in MAPPING_ROOTS.items():
        assert cfg["package-dir"][name] == root


def test_python_dash_m_lite3r_is_the_cli():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "lite3r", "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "reconstruct" in out.stdout and "bench" in out.stdout
