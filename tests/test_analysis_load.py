"""Loading the results folder: column selection, pushed-down filters, unreadable files, schema
drift, and the import boundary (no torch, ray, models, attacks or sweep)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from analysis.errors import AnalysisError, AnalysisWarning
from analysis.load import (
    load_attacks,
    load_gallery,
    load_noise,
    load_train,
    read_sweep_config,
    read_tracking,
)
from analysis.synthetic import write_synthetic_results

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    write_synthetic_results(out, grid=[("vae", 1.0, 1), ("tcvae", 1.0, 1), ("tcvae", 4.0, 1), ("seatbelt", 4.0, 2)],
                            seeds=(0, 1), pairs=2, n_lam=3)
    return out


def test_columns_and_filters_are_applied(folder):
    df = load_attacks(folder, columns=["trial_id", "model", "beta", "objective"])
    assert list(df.columns) == ["trial_id", "model", "beta", "objective"]
    # 4 settings × 2 seeds × (latent + output) × 2 pairs × 3 λ
    assert len(df) == 4 * 2 * 2 * 2 * 3

    sub = load_attacks(folder, columns=["model", "mode", "beta"],
                       filters={"model": ["tcvae", "vae"], "mode": "latent", "beta": (">=", 4)})
    assert set(sub["model"]) == {"tcvae"} and set(sub["mode"]) == {"latent"} and (sub["beta"] >= 4).all()
    assert len(sub) == 2 * 2 * 3

    expr = (pc.field("model") == "seatbelt") & (pc.field("lam") == 0.0)
    e = load_attacks(folder, columns=["model", "lam"], filters=expr)
    assert len(e) == 2 * 2 * 2 and (e["lam"] == 0).all()

    # a filter on a column no file has matches nothing; a requested unknown column comes back null
    assert load_attacks(folder, filters={"no_such_column": 1}).empty
    assert load_attacks(folder, columns=["model", "new_metric"])["new_metric"].isna().all()


def test_other_folders_and_json(folder):
    train = load_train(folder)
    assert len(train) == 8 and set(train["status"]) == {"ok"}
    assert isinstance(train["kl_layers"].iloc[0], (list, tuple)) or hasattr(train["kl_layers"].iloc[0], "__len__")
    noise = load_noise(folder, filters={"sigma": 1.0})
    assert set(noise["sigma"]) == {1.0}
    gal = load_gallery(folder, columns=["trial_id", "height", "width", "channels", "input"])
    row = gal.iloc[0]
    assert len(row["input"]) == row["height"] * row["width"] * row["channels"]
    assert read_sweep_config(folder)["name"] == "synthetic"
    assert read_tracking(folder) is None


def test_the_synthetic_writer_writes_the_contracts_folder(folder):
    """sweep.json of the shape the sweep writes (results.records), files where results.layout
    puts them, columns of results.schema."""
    from dataclasses import fields

    from results import layout, records, schema

    config = read_sweep_config(folder)
    assert set(config["grid"]) == {f.name for f in fields(records.GridConfig)}
    assert records.grid_of(config).models == ["vae", "tcvae", "seatbelt"]
    trial = "dsprites-seatbelt-b4-L2-z10-s1"
    assert (folder / layout.train_file(trial)).is_file() and (folder / layout.noise_file(trial)).is_file()
    attack = layout.attack_file(trial, "latent", "kl", 0, 1)
    assert layout.parse_attack_file(attack) == (trial, "latent", "kl", 0, 1)
    assert (folder / attack).is_file() and (folder / layout.gallery_file(attack)).is_file()
    assert load_train(folder).columns.tolist() == schema.TRAIN.names


def test_unreadable_files_are_skipped_with_a_warning(folder, tmp_path):
    out = tmp_path / "copy"
    import shutil

    shutil.copytree(folder, out)
    victim = sorted((out / "attacks").rglob("*.parquet"))[0]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])  # truncated mid-write
    (out / "attacks" / "junk").mkdir()
    (out / "attacks" / "junk" / "x.parquet").write_bytes(b"not parquet at all")
    (out / "attacks" / "junk" / ".x.parquet.tmp").write_bytes(b"half")  # temp file: ignored silently
    (out / "attacks" / "junk" / ".hidden.parquet").write_bytes(b"half")  # hidden: ignored silently
    with pytest.warns(AnalysisWarning, match="skipped 2 unreadable Parquet") as rec:
        df = load_attacks(out)
    msg = str(rec[0].message)
    assert victim.name in msg and "x.parquet" in msg and ".hidden" not in msg
    assert len(df) == 4 * 2 * 2 * 2 * 3 - 2 * 3
    assert sorted(Path(p).name for p, _ in df.attrs["skipped_files"]) == sorted([victim.name, "x.parquet"])


def test_schema_drift_and_duplicates(tmp_path):
    out = tmp_path / "r"
    (out / "attacks" / "a").mkdir(parents=True)
    base = dict(trial_id="a", dataset="d", model="vae", mode="latent", similarity="kl", pair=0)
    # older file: beta as int, no auddc column, mig all-null
    pq.write_table(pa.Table.from_pylist([{**base, "beta": 1, "lam": 0.0, "objective": 1.0}]),
                   out / "attacks" / "a" / "t1.parquet")
    pq.write_table(pa.Table.from_pylist([{**base, "beta": 1.5, "lam": 1.0, "objective": 2.0, "auddc": 0.5}]),
                   out / "attacks" / "a" / "t2.parquet")
    # the same key written again by a re-run: one row survives (the last file's)
    pq.write_table(pa.Table.from_pylist([{**base, "beta": 1.5, "lam": 1.0, "objective": 3.0, "auddc": 0.5}]),
                   out / "attacks" / "a" / "t3.parquet")
    df = load_attacks(out).sort_values("lam")
    assert len(df) == 2
    assert df["beta"].tolist() == [1.0, 1.5]
    assert df["objective"].tolist() == [1.0, 3.0]
    assert pd.isna(df["auddc"].iloc[0])


def test_missing_folders_give_empty_frames(tmp_path):
    (tmp_path / "empty").mkdir()
    assert load_attacks(tmp_path / "empty").empty
    assert "objective" in load_attacks(tmp_path / "empty").columns
    assert load_train(tmp_path / "empty", columns=["elbo"]).columns.tolist() == ["elbo"]
    with pytest.raises(AnalysisError, match="does not exist"):
        load_train(tmp_path / "nope")
    assert load_train(f"file://{tmp_path / 'empty'}").empty
    with pytest.raises(AnalysisError, match="cannot open this location"):
        load_attacks("nosuchscheme://x")
    (tmp_path / "empty" / "tracking.json").write_text("{broken")
    with pytest.raises(AnalysisError, match="not readable JSON"):
        read_tracking(tmp_path / "empty")


def test_analysis_imports_no_torch_ray_or_sibling_packages():
    code = (
        "import sys, json\n"
        "import analysis, analysis.errors, analysis.load, analysis.stats, analysis.aggregate, "
        "analysis.figures, analysis.report, analysis.query, analysis.synthetic, analysis.claims, "
        "analysis.sanity, analysis.thesis\n"
        "analysis.query.parse_where(\"model='seatbelt' and beta>=4\")\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'ray', 'models', 'attacks', 'sweep')]\n"
        "print(json.dumps(bad))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1]) == []


def test_corrupt_pages_behind_a_valid_footer_are_skipped(folder, tmp_path):
    import shutil
    import struct

    out = tmp_path / "copy2"
    shutil.copytree(folder, out)
    victim = sorted((out / "attacks").rglob("*.parquet"))[1]
    data = bytearray(victim.read_bytes())
    footer_len = struct.unpack("<I", bytes(data[-8:-4]))[0]
    end = len(data) - footer_len - 8
    data[4:end] = bytes((7 * i + 13) % 256 for i in range(end - 4))  # garbage pages, footer intact
    victim.write_bytes(bytes(data))
    with pytest.warns(AnalysisWarning, match="skipped 1 unreadable"):
        df = load_attacks(out, columns=["trial_id", "objective"])
    assert len(df) == 4 * 2 * 2 * 2 * 3 - 2 * 3
