"""Several training seeds per variant in the ablation benchmark: run names, mean ± sd and paired leads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pancapchain.ablation import mean_sd, paired_gaps, parse_seeds, run_key, seed_summary, split_key

ROOT = Path(__file__).resolve().parents[1]


def test_seed_lists_parse_and_bad_entries_are_named():
    assert parse_seeds("42, 43,44") == [42, 43, 44]
    assert parse_seeds("") == []
    with pytest.raises(ValueError, match="'4x' is not a non-negative integer"):
        parse_seeds("42,4x")
    with pytest.raises(ValueError, match="seed 43 is given twice"):
        parse_seeds("43,42,43")


def test_the_recipe_seed_keeps_the_plain_name_and_keys_round_trip():
    assert run_key("chain", 42, 42) == "chain"
    assert run_key("chain", 43, 42) == "chain@43"
    assert split_key("chain@43", 42) == ("chain", 43)
    assert split_key("no_discover", 42) == ("no_discover", 42)


def test_mean_and_sample_sd():
    assert mean_sd([3.0]) == (3.0, 0.0)
    mean, sd = mean_sd([2.0, 4.0, 6.0])
    assert mean == 4.0 and sd == pytest.approx(2.0)


# (variant, seed, eval set) -> (PancapScore, tag + loc): the twenty-fourth session's benchmark-val figures
POINTS = {
    ("chain", 42, "val"): (234.42, 160.73), ("chain", 43, "val"): (230.38, 156.44),
    ("chain", 44, "val"): (229.43, 160.04), ("direct", 42, "val"): (240.76, 157.88),
    ("direct", 43, "val"): (236.55, 154.13), ("direct", 44, "val"): (243.20, 158.02),
    ("chain", 42, "val_other"): (237.26, 158.72), ("no_discover", 43, "val"): (230.0, 150.0),
}


def test_summary_rows_give_each_variant_and_set_its_seeds():
    rows = {(r[0], r[1]): r[2:] for r in seed_summary(POINTS)}
    assert rows[("chain", "val")] == ["42,43,44", "231.41 ± 2.65", "159.07 ± 2.30"]
    assert rows[("direct", "val")][0] == "42,43,44"
    assert rows[("chain", "val_other")] == ["42", "237.26 ± 0.00", "158.72 ± 0.00"]


def test_leads_are_paired_by_seed_and_set():
    rows = {r[0]: r[1:] for r in paired_gaps(POINTS, "chain")}
    assert rows["chain - direct"] == ["val", "42: +2.85, 43: +2.31, 44: +2.02", "+2.39 ± 0.42"]
    # no_discover has seed 43 only: its lead is the seed-43 pair alone
    assert rows["chain - no_discover"] == ["val", "43: +6.44", "+6.44 ± 0.00"]
    assert all(r[1] != "val_other" for r in paired_gaps(POINTS, "chain"))  # no other variant scored val_other


def test_the_benchmark_refuses_a_bad_seed_list_before_any_work(tmp_path):
    out = tmp_path / "lq"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "learning_quality.py"), "--out", str(out),
                           "--seeds", "42,x"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode != 0
    assert "'x' is not a non-negative integer" in proc.stderr
    assert not out.exists()


def test_a_run_its_epoch_cap_ended_is_marked_in_the_table():
    import importlib.util
    spec = importlib.util.spec_from_file_location("lq_bench", ROOT / "benchmarks" / "learning_quality.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    scores = {d: {"f1": 50.0} for d in ("tag", "loc", "attr", "rel", "global")}
    result = {"metrics": {"pancapscore": 250.0, "scores": scores}, "cut": {"percent": 0.0, "cut": 0, "total": 4}}
    assert bench.row("direct", "val", 434.2, result, "epochs_or_steps")[2] == "434 (cap)"
    assert bench.row("direct", "val", 540.4, result, "wall_budget")[2] == "540"
    assert bench.row("direct", "val", 540.4, result)[2] == "540"  # results from before the field existed
