"""experiments.verify and the paper-scale tables: cells against hand-computed values, and the real RESULTS.md."""

from __future__ import annotations

import csv
import json
import os

import pytest

from experiments import verify
from experiments.paper_scale import tables


def _write_run(folder, name, *, optim, lr, opt_kwargs, lambdas, losses, val_accuracy, test=None):
    path = os.path.join(folder, name)
    os.makedirs(path)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"flags": {"optim": optim, "lr": lr, "opt_kwargs": opt_kwargs, "n_epochs": len(losses)}}, f)
    with open(os.path.join(path, "lanczos.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "step", *[f"lambda_{i}" for i in range(1, 6)], "matvecs", "seconds", "loss",
                         "fallbacks", "error"])
        for epoch, value in enumerate(lambdas):
            writer.writerow([epoch, 352 * epoch, value, value / 2, value / 3, value / 4, value / 5, 10 + epoch, 1.0,
                             0.5, 0, ""])
    with open(os.path.join(path, "history.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "accuracy", "loss", "val_accuracy", "val_loss"])
        for epoch, (loss, val) in enumerate(zip(losses, val_accuracy)):
            writer.writerow([epoch, 0.5, loss, val, 0.6])
    if test is not None:
        with open(os.path.join(path, "final.json"), "w") as f:
            json.dump({"test_accuracy": test, "test_loss": 0.4}, f)


@pytest.fixture
def results(tmp_path):
    folder = str(tmp_path / "results")
    _write_run(folder, "sgd_lr0.01", optim="sgd", lr=0.01, opt_kwargs="{}", lambdas=[1, 4, 10, 8, 6],
               losses=[1.0, 0.5, 0.3, 0.2], val_accuracy=[0.6, 0.7, 0.75, 0.74], test=0.73)
    _write_run(folder, "nsgd_gamma0.1", optim="nsgd", lr=0.01, opt_kwargs="{'overshoot': 0.1, 'KK': 5}",
               lambdas=[1, 30, 40, 20, 14], losses=[0.9, 0.4, 0.25, 0.15], val_accuracy=[0.62, 0.72, 0.78, 0.77])
    return folder


def _cells(table: str, first_cell: str) -> list[str]:
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} in\n{table}")


def test_runs_table_cells_by_hand(results):
    runs = tables.load_runs(results)
    table = tables.runs_table(runs)
    sgd = _cells(table, "`sgd_lr0.01`")
    # Measurements at epochs 0..4: running means of 3 are 5, 7.33, 8, the last window (centred on epoch 3);
    # the later half (epochs >= 2) averages 10, 8, 6 = 8; 8 / (2 / 0.01) = 0.04.
    assert sgd[7] == "8 (3, last window)"
    assert sgd[8] == "8" and sgd[9] == "0.04"
    assert sgd[5] == "200" and sgd[6] == "200"
    assert sgd[10] == "0.2000" and sgd[11] == "0.7500 (3)" and sgd[13] == "0.73"
    nsgd = _cells(table, "`nsgd_gamma0.1`")
    # Windows 23.67, 30, 24.67: the peak 30 is centred on epoch 2; later half (40 + 20 + 14) / 3 = 24.67.
    assert nsgd[7] == "30 (2)" and nsgd[8] == "24.7" and nsgd[6] == "2000" and nsgd[13] == "n/a"
    # Products per measurement after the first: matvecs 11..14, median 12.5.
    assert nsgd[14] == "12.5"


def test_pairs_table_matches_training_loss_by_hand(results):
    table = tables.pairs_table(tables.load_runs(results))
    row = _cells(table, "NSGD γ=0.1 vs SGD, η=0.01")
    assert row[1] == "24.7 / 8" and row[2] == "3.08"
    # Every run reaches the larger of the two lowest losses, 0.2: NSGD first at epoch 4 (0.15), SGD at epoch 4.
    assert row[5] == "0.2000" and row[6] == "0.7700 (4) / 0.7400 (4)"
    assert len(table.splitlines()) == 3  # the other pairs have no runs yet


def test_verify_detects_a_changed_cell_and_a_missing_table(results, tmp_path):
    computed = {"paper_scale.runs": lambda: tables.runs_table(tables.load_runs(results))}
    page = tmp_path / "RESULTS.md"
    page.write_text("# R\n\n<!-- verify: paper_scale.runs -->\n" + computed["paper_scale.runs"]() + "\n\nprose\n")
    assert verify.verify(str(page), tables=computed) == []
    page.write_text(page.read_text().replace("0.7500 (3)", "0.7600 (3)"))
    (problem,) = verify.verify(str(page), tables=computed)
    assert "paper_scale.runs: the table differs" in problem and "0.7600 (3)" in problem
    assert verify.verify(str(page), write=True, tables=computed)  # rewrites from the data ...
    assert verify.verify(str(page), tables=computed) == []  # ... after which it matches
    page.write_text("# R\n")
    assert verify.verify(str(page), tables=computed) == [
        "paper_scale.runs: no '<!-- verify: paper_scale.runs -->' table in " + os.path.relpath(str(page), verify.ROOT)]


def test_every_table_in_results_md_matches_the_committed_data():
    assert verify.main([]) == 0


def test_collect_skips_a_run_that_has_just_started(tmp_path):
    """A run with no finished epoch (a header-only history, no measurement log) was copied, and the plot then
    failed on its missing lanczos.csv; only runs with a finished epoch are collected."""
    from experiments.paper_scale import collect
    from experiments.paper_scale.run import RUNS

    first, second = list(RUNS)[:2]
    done, started = tmp_path / "out" / first, tmp_path / "out" / second
    done.mkdir(parents=True)
    started.mkdir(parents=True)
    (done / "history.csv").write_text("epoch,loss\n0,1.0\n")
    (done / "lanczos.csv").write_text("epoch,lambda_1\n0,2.0\n")
    (started / "history.csv").write_text("epoch,loss\n")
    assert collect.collect(str(tmp_path / "out"), str(tmp_path / "results")) == [first]
    assert sorted(os.listdir(tmp_path / "results" / first)) == ["history.csv", "lanczos.csv"]
    assert not (tmp_path / "results" / second).exists()


def test_no_paragraph_of_the_results_pages_appears_twice():
    """The tables are recomputed by verify, the prose around them is not: a slip in an edit once copied a whole
    section of experiments/RESULTS.md (study 2's augmented part and study 3's old text) a second time."""
    import collections
    import re

    root = os.path.dirname(verify.RESULTS_MD)
    for path in (verify.RESULTS_MD, os.path.join(os.path.dirname(root), "benchmarks", "RESULTS.md")):
        with open(path, encoding="utf-8") as f:
            blocks = [b.strip() for b in re.split(r"\n\s*\n", f.read())]
        counts = collections.Counter(b for b in blocks if len(b) >= 200 and not b.startswith("|"))
        assert [b[:80] for b, n in counts.items() if n > 1] == [], path
