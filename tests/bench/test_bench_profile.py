"""The profile benchmark harness at a tiny scale: it completes and its lookups agree with the generated data.

No timing is asserted: speed is measured by running `bench/bench_profile.py` at scale, not by tests.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_profile.py"


def load_bench() -> ModuleType:
    if str(BENCH.parent) not in sys.path:
        sys.path.insert(0, str(BENCH.parent))  # the benchmarks import their shared module as a sibling
    spec = importlib.util.spec_from_file_location("bench_profile", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.server
def test_bench_profile_runs_and_answers_agree(tmp_path: Path) -> None:
    bench = load_bench()
    results = bench.run(300, events_per_profile=3, out=tmp_path, lookups=40, threads=2, concurrent=20, quiet=True)
    assert results["correct"], results
    ingest = results["ingest"]
    assert ingest["records"]["crm"] == 300 and ingest["records"]["events"] == 900
    assert results["lookup_pdg"]["checked"] == 40 and results["lookup_pdg"]["wrong"] == 0
    assert results["lookup_none"]["wrong"] == 0
    assert results["linked_in_sample"] > 0  # some answers merge a crm and a loyalty fragment
    assert results["lookup_pdg_concurrent"]["n"] == 20 and results["lookup_pdg_concurrent"]["errors"] == 0
    assert results["memory"]["VmHWM"] > 0
    assert Path(results["results_file"]).exists()
