"""benchmarks/provenance.py: every result file carries its command, commit and versions; probes write
their rows through write_rows (JSON + markdown + stdout)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _provenance():
    spec = importlib.util.spec_from_file_location("provenance", ROOT / "benchmarks" / "provenance.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_write_rows_writes_json_table_and_prints(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LITE3R_COMMIT", "abc1234")
    prov = _provenance()
    rows = [{"frames": 32, "what": "a", "ms": 1.5}, {"frames": 32, "what": "note", "choice": "x"}]
    table = prov.write_rows(
        tmp_path / "r.json", rows, ["frames", "what", "ms"], table_rows=rows[:1], keep=0.1
    )
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["results"] == {"rows": rows, "keep": 0.1}
    assert data["provenance"]["git_commit"] == "abc1234" and data["provenance"]["torch"]
    md = (tmp_path / "r.md").read_text()
    assert "commit abc1234" in md and "| 32 | a | 1.5 |" in md and "note" not in md
    assert table in capsys.readouterr().out
