"""The benchmark harness (`bench/run.py`) at a tiny scale: it runs end to end — generate, ingest through a real
server and worker, the three exports, a segment job, the API under load, the floor, pandas and Spark — and every
answer agrees (row counts, sampled profiles field by field, segment counts, lookups).

No timing is asserted: speed is measured by running the harness at scale (`make bench`), not by tests.
"""

from __future__ import annotations

import importlib
import json
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def load_harness() -> ModuleType:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))  # the benchmarks import each other as sibling modules
    return importlib.import_module("run")


@pytest.mark.server
@pytest.mark.skipif(shutil.which("java") is None, reason="PySpark needs a Java runtime (17 or later)")
def test_harness_runs_and_answers_agree(tmp_path: Path) -> None:
    harness = load_harness()
    options = harness.Options(scale=300, out=tmp_path / "out", results_dir=tmp_path / "results",
                              report=tmp_path / "RESULTS.md", plot=tmp_path / "results.png", load_seconds=1.0,
                              clients=50, stored_jobs=2000, sample=100, lookups_checked=20, spark_memory="2g",
                              quiet=True)
    results = harness.run(options)

    assert results["correct"], results["failures"]
    assert results["failures"] == []
    exports = results["exports"]
    assert exports["profiles"]["rows"] > 300  # 300 people, plus those whose loyalty record is not linked
    assert exports["events"]["rows"] == exports["profiles"]["rows"]
    assert 0 < exports["segment"]["rows"] < exports["profiles"]["rows"]

    checks = results["checks"]
    for task in ("profiles", "events", "segment"):
        for peer in ("pandas", "spark"):
            assert checks[task][f"{peer}_rows"] == exports[task]["rows"]
            sample = checks[task][f"{peer}_sample"]
            assert sample["checked"] > 0 and sample["wrong"] == 0, sample
    assert checks["segmentation"]["wrong"] == {}
    assert results["segmentation"]["segments"] == 20
    assert results["lookups_checked"]["checked"] > 0 and results["lookups_checked"]["wrong"] == 0

    peers = results["peers"]
    assert set(peers) == {"floor", "pandas", "spark"}
    assert peers["floor"]["profiles"]["rows"] == sum(results["generate"]["records"][d] for d in ("crm", "loyalty"))
    api = results["api"]
    assert api["stored_jobs"] == 2000
    for name in ("create", "list", "get", "lookup", "lookup_1"):
        assert api[name]["n"] > 0 and api[name]["errors"] == 0, api[name]

    written = json.loads((tmp_path / "results" / "scale-300.json").read_text())
    assert written["correct"] and written["scale"] == 300
    report = (tmp_path / "RESULTS.md").read_text()
    assert "## Targets (issue 6)" in report and "PySpark local" in report
    assert (tmp_path / "results.png").stat().st_size > 0
