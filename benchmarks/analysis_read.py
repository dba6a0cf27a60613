"""Benchmark: load a synthetic attacks/ dataset of ~1,000,000 rows (many files) with the analysis
loader, then run the report's aggregations on it. Prints the figures.

    python benchmarks/analysis_read.py [--rows 1000000] [--keep DIR]

One trial writes 2 files (latent + output task) of pairs × λ rows each (10 × 51, the paper's
protocol), so 1M rows are ~2,000 Parquet files in ~1,000 trial folders.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

from analysis import aggregate as agg
from analysis.claims import claims_table
from analysis.load import list_parquet_files, load_attacks, load_train
from analysis.report import REPORT_ATTACK_COLUMNS
from analysis.synthetic import write_synthetic_results
from results.vocabulary import LATENT, MODES

PAIRS, N_LAM = 10, 51


def grid() -> list[tuple[str, float, int]]:
    betas = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    return ([("vae", 1.0, 1)] + [("tcvae", b, 1) for b in betas]
            + [(m, b, L) for m in ("tcdlgm", "seatbelt") for b in betas for L in (2, 3, 4, 5)])


def timed(label: str, fn, rows: list):
    t = time.perf_counter()
    result = fn()
    dt = time.perf_counter() - t
    rows.append((label, dt, result))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--keep", type=Path, default=None, help="write the dataset here and keep it")
    args = parser.parse_args()

    per_trial = 2 * PAIRS * N_LAM
    g = grid()
    seeds = math.ceil(args.rows / per_trial / len(g))
    with tempfile.TemporaryDirectory(prefix="analysis-bench-") as tmp:
        out = args.keep or Path(tmp) / "out"
        t = time.perf_counter()
        write_synthetic_results(out, grid=g, seeds=tuple(range(seeds)), pairs=PAIRS, n_lam=N_LAM,
                                noise=False, gallery=False)
        t_write = time.perf_counter() - t
        files = list_parquet_files(out / "attacks")
        size = sum(os.path.getsize(f) for f in files)
        print(f"wrote {len(files):,} attack files ({size / 2**20:.1f} MiB) for {len(g) * seeds:,} trials "
              f"in {t_write:.1f} s")

        res: list = []
        full = timed("load_attacks, all 31 columns", lambda: load_attacks(out), res)
        cols = timed(f"load_attacks, the report's {len(REPORT_ATTACK_COLUMNS)} columns",
                     lambda: load_attacks(out, columns=REPORT_ATTACK_COLUMNS), res)
        timed("load_attacks, 4 columns, filter model=seatbelt & mode=latent (pushed down)",
              lambda: load_attacks(out, columns=["beta", "layers", "pair", "objective"],
                                   filters={"model": "seatbelt", "mode": LATENT}), res)
        sim = {m: agg.default_similarity(cols, m) for m in MODES}
        timed("aggregate: Δ_latent by β (all λ), t-intervals",
              lambda: agg.attack_by_beta(cols, "objective", LATENT, sim[LATENT]), res)
        timed("aggregate: Δ_latent by β (selected λ)",
              lambda: agg.attack_by_beta(cols, "objective", LATENT, sim[LATENT], selected_only=True), res)
        timed("aggregate: Seatbelt heatmap over (β, L)",
              lambda: agg.attack_heatmap(cols, "objective", LATENT, "seatbelt", sim[LATENT], l1_model="tcvae"), res)
        timed("aggregate: AUDDC by β (per pair)", lambda: agg.attack_by_beta(cols, "auddc", LATENT), res)
        train = load_train(out)
        timed("claims: the paper's claims table (mixed-model contrasts, both λ variants)",
              lambda: claims_table(cols, train, similarity=sim), res)

        n = len(full)
        print(f"rows: {n:,}; memory of the report's columns in pandas: "
              f"{cols.memory_usage(deep=True).sum() / 2**20:.0f} MiB")
        print(f"{'step':<80} {'seconds':>8} {'rows/s':>12}")
        for label, dt, result in res:
            rows = len(result) if hasattr(result, "__len__") else 0
            rate = f"{n / dt:,.0f}" if label.startswith("load") else ""
            print(f"{label:<80} {dt:8.2f} {rate:>12}   -> {rows:,} rows")


if __name__ == "__main__":
    main()
