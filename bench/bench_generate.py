"""Throughput of `openprofile.generate`: records written to Parquet per second.

    .venv/bin/python bench/bench_generate.py --profiles 100000 --repeat 3

100k profiles give 100k crm + ~60k loyalty + 1M events records.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from openprofile.generate import generate_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", type=int, default=100_000)
    parser.add_argument("--events-per-profile", type=int, default=10)
    parser.add_argument("--fragments-per-profile", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="directory to write into (default: a temp dir)")
    args = parser.parse_args()

    out = args.out or Path(tempfile.mkdtemp(prefix="openprofile-bench-"))
    rates: list[float] = []
    try:
        for run in range(args.repeat):
            start, cpu = time.perf_counter(), time.process_time()
            data = generate_dataset(
                out,
                args.profiles,
                seed=42,
                events_per_profile=args.events_per_profile,
                fragments_per_profile=args.fragments_per_profile,
            )
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu
            records = sum(f.records for f in data.files)
            size = sum(f.path.stat().st_size for f in data.files)
            rates.append(records / wall)
            counts = ", ".join(f"{d} {data.records(d):,}" for d in ("crm", "loyalty", "events"))
            print(
                f"run {run + 1}: {records:,} records ({counts}) in {wall:.2f}s wall / {cpu:.2f}s cpu"
                f" = {records / wall:,.0f} records/s, {size / 1e6:.0f} MB"
            )
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)
    print(f"median {statistics.median(rates):,.0f} records/s, best {max(rates):,.0f} records/s")


if __name__ == "__main__":
    main()
