"""The four studies of experiments/ end to end at smoke scale on real Fashion-MNIST, and their helpers."""

import csv
import json
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from experiments import results as run_results  # noqa: E402
from experiments import scale as scales  # noqa: E402
from experiments import statistics, training  # noqa: E402
from tf_sharpest.callbacks import Measurement  # noqa: E402


def finite(values):
    return np.all(np.isfinite(np.asarray(values, dtype=float)))


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def table_rows(table):
    """The body rows of a markdown table, as lists of cells."""
    lines = [line for line in table.splitlines() if line.startswith("|")][2:]
    return [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines]


def check_run_files(runs):
    """Every run under ``runs``: its history.csv holds its result.json's logs, its lanczos.csv its measurements,
    and each epoch's logged lambda_i is the measurement at that epoch's start. Returns ``{folder: (result,
    eigenvalues from lanczos.csv or None)}``."""
    found = {}
    for folder, _, files in sorted(os.walk(runs)):
        if "result.json" not in files:
            continue
        with open(os.path.join(folder, "result.json")) as f:
            result = json.load(f)
        history, logs = read_csv(os.path.join(folder, "history.csv")), result["logs"]
        assert [int(r["epoch"]) for r in history] == list(range(len(logs["loss"])))
        for key, values in logs.items():
            np.testing.assert_allclose([float(r[key]) for r in history], values, rtol=1e-6, err_msg=key)
        eigenvalues = None
        assert "lanczos" not in result  # the measurements live in the callback's files, written once
        measurements = run_results.load_results(folder)[0]["measurements"]
        if measurements:
            measured = read_csv(os.path.join(folder, "lanczos.csv"))
            k = len(measurements[0].eigenvalues)
            eigenvalues = np.array([[float(r[f"lambda_{i + 1}"]) for i in range(k)] for r in measured])
            assert [int(r["epoch"]) for r in measured] == list(range(len(history) + 1))
            np.testing.assert_array_equal(eigenvalues, [m.eigenvalues for m in measurements])
            assert np.all(eigenvalues[:, 0] > 0) and np.all(np.diff(eigenvalues, axis=1) <= 0)
            for i in range(k):
                np.testing.assert_allclose([float(r[f"lambda_{i + 1}"]) for r in history], eigenvalues[:-1, i],
                                           rtol=1e-6)
        found[folder] = (result, eigenvalues)
    assert found, f"no result.json under {runs}"
    return found


def test_helpers_on_known_numbers():
    assert statistics.peak([1.0, 3.0, np.nan, 2.0]) == (1, 3.0)
    assert statistics.peak([np.nan, np.nan])[0] == -1
    assert run_results.best_validation_epoch({"val_accuracy": [0.5, 0.7, 0.7, 0.6]}) == 1
    np.testing.assert_allclose(run_results.top_k_norm(np.array([[3.0, 4.0], [1.0, 0.0]])), [5.0, 1.0])
    result = {"measurements": [Measurement(0, 0, np.array([2.0, 1.0]), 9, 0.1, 2.3),
                               Measurement(1, 5, np.array([4.0, 3.0]), 7, 0.1, 1.9)]}
    epochs, values = run_results.eigenvalue_curve(result)
    np.testing.assert_array_equal(epochs, [0, 1])
    np.testing.assert_array_equal(values, [[2, 1], [4, 3]])


def test_quadratic_prediction_by_hand():
    from experiments.sgd_step.plot import quadratic_prediction

    record = {"multipliers": [0.5, 1.0], "alignment": [0.5], "gradient_norm": 2.0, "eigenvalues": [30.0]}
    # g_1 = 1; step a = 0.05 and 0.1: -a (1 - 30 a / 2) = -0.0125 and +0.05
    np.testing.assert_allclose(quadratic_prediction(record, 0.1), [[-0.0125, 0.05]])


@pytest.mark.needs_fmnist
def test_spectrum_shape_smoke(tmp_path):
    from experiments.spectrum_shape import plot, run

    results = run.main(["--smoke", "--out", str(tmp_path / "runs")])
    assert [r["config"]["lr"] for r in results] == [0.01, 0.1]
    for result in results:
        assert len(result["measurements"]) == scales.SMOKE.epochs + 1  # every epoch start and after training
        assert all(finite(m.eigenvalues) and len(m.eigenvalues) == 2 for m in result["measurements"])
        assert len(result["logs"]["lambda_1"]) == scales.SMOKE.epochs
        assert finite(result["logs"]["test_accuracy"]) and result["final"]["distance_from_init"] > 0
    # A second call reuses the stored runs; a changed configuration is refused, not silently reused.
    assert run.main(["--smoke", "--out", str(tmp_path / "runs")])[0]["seconds"] == results[0]["seconds"]
    with pytest.raises(SystemExit, match="another configuration"):
        run.main(["--smoke", "--out", str(tmp_path / "runs"), "--epochs", "3"])
    table = plot.main(["--out", str(tmp_path / "runs"), "--figures", str(tmp_path / "fig")])
    assert os.path.getsize(tmp_path / "fig" / "spectrum.png") > 10_000
    rows = table_rows(table)
    assert len(rows) == 2
    for result, eigenvalues in check_run_files(tmp_path / "runs").values():  # the table's numbers are the CSVs'
        lr, lambda_1 = result["config"]["lr"], eigenvalues[:, 0]
        (row,) = [r for r in rows if r[0] == f"{lr:g}"]
        assert row == [f"{lr:g}", f"{lambda_1[0]:.2f}", f"{lambda_1.max():.2f}", str(np.argmax(lambda_1)),
                       f"{lambda_1[-1]:.2f}", f"{2 / lr:g}", "yes" if lambda_1.max() < 2 / lr else "**no**"]
    # The compact copy that gets committed recomputes the same table (what experiments.verify does).
    from experiments import keep_runs

    (tmp_path / "runs" / "lr0.01" / "model.weights.h5").write_bytes(b"weights")  # never kept
    (tmp_path / "runs" / "lr1").mkdir()  # a run still training: its log so far is not kept
    (tmp_path / "runs" / "lr1" / "history.csv").write_text("epoch,loss\n0,2.3\n")
    kept = keep_runs.main(["spectrum_shape", "--src", str(tmp_path / "runs"), "--dest", str(tmp_path / "kept")])
    assert sorted(kept) == sorted(os.path.join(f"lr{lr:g}", name) for lr in (0.01, 0.1)
                                  for name in ("history.csv", "lanczos.csv", "lanczos.npz", "result.json"))
    assert plot.spectrum_table(plot.load_sorted(str(tmp_path / "kept"))) == table
    with pytest.raises(SystemExit, match="over the limit"):
        keep_runs.main(["spectrum_shape", "--src", str(tmp_path / "runs"), "--dest", str(tmp_path / "no"),
                        "--limit", "100"])
    assert not (tmp_path / "no").exists()


def by_hand_mean_sd(values):
    """Mean ± sample standard deviation, as the study tables print them (one decimal)."""
    values = np.asarray(values, float)
    mean = sum(values) / len(values)
    sd = np.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{mean:.1f} ± {sd:.1f}"


def test_spike_proof_statistics_by_hand():
    curve = [1.0, 2.0, 30.0, 3.0, 4.0, 5.0]  # one spike at index 2
    assert statistics.smoothed_peak(curve) == pytest.approx((30 + 3 + 4) / 3)
    assert statistics.smoothed_peak_index(curve) == 3  # the window 30, 3, 4 is centred on index 3
    assert statistics.later_half_mean([0, 1, 2, 3, 4, 5], curve) == pytest.approx((3 + 4 + 5) / 3)  # steps >= 2.5
    assert statistics.spread([1.0, 3.0]) == "2.0 ± 1.4"


@pytest.mark.needs_fmnist
def test_lr_batch_size_smoke(tmp_path):
    from experiments.lr_batch_size import plot, run

    results = run.main(["--smoke", "--out", str(tmp_path / "runs"), "--lrs", "0.1", "--batch_sizes", "32,64",
                        "--seeds", "0,1"])
    assert [(r["config"]["lr"], r["config"]["batch_size"], r["config"]["seed"]) for r in results] == [
        (0.1, 128, 0), (0.05, 32, 0), (0.05, 64, 0), (0.1, 128, 1), (0.05, 32, 1), (0.05, 64, 1)]
    assert [r["config"]["steps_per_epoch"] for r in results[:3]] == [2, 8, 4]
    table = plot.main(["--out", str(tmp_path / "runs"), "--figures", str(tmp_path / "fig")])
    assert os.path.getsize(tmp_path / "fig" / "lr_batch_size.png") > 10_000
    rows = {(r[1], r[2]): r for r in table_rows(table.split("\n\n")[0])}
    runs = check_run_files(tmp_path / "runs")
    assert len(runs) == 6 and len(rows) == 3
    per_setting = {}
    for result, eigenvalues in runs.values():
        c = result["config"]
        per_setting.setdefault((f"{c['lr']:g}", str(c["batch_size"])), []).append((c["seed"], result, eigenvalues))
    for key, seeds in per_setting.items():  # the table's numbers are the CSVs', summarised by hand
        seeds.sort(key=lambda entry: entry[0])
        lambda_1 = [eigenvalues[:, 0] for _, _, eigenvalues in seeds]
        windows = [[np.mean(v[i:i + 3]) for i in range(len(v) - 2)] for v in lambda_1]  # 3 measurements: one
        row = rows[key]
        assert row[3] == "2"
        assert row[4] == by_hand_mean_sd([max(w) for w in windows])
        assert row[7] == by_hand_mean_sd([v.max() for v in lambda_1])
        assert row[10] == f"{np.mean([r['final']['train_loss'] for _, r, _ in seeds]):.3f}" + row[10][5:]
        val = [r["logs"]["val_accuracy"] for _, r, _ in seeds]
        assert row[11].startswith(f"{np.mean([v[-1] for v in val]):.3f}")
        assert row[12].startswith(f"{np.mean([max(v) for v in val]):.3f}") and row[14] == "0"
        assert row[13] == f"{sum(int(np.argmax(w)) == len(w) - 1 for w in windows)}/{len(seeds)}"
    # The claim, seed by seed: along the batch sweep (32, 64) the smoothed peak rises in k of the 2 seeds.
    rising = sum(max(np.convolve(per_setting[("0.05", "32")][s][2][:, 0], np.ones(3) / 3, "valid"))
                 < max(np.convolve(per_setting[("0.05", "64")][s][2][:, 0], np.ones(3) / 3, "valid")) for s in (0, 1))
    comparisons = {(r[0], r[1]): r for r in table_rows(table.split("\n\n")[1])}
    row = comparisons[("smoothed peak of lambda_1", "batch 32 < batch 64")]
    assert row[2] == f"{rising}/2"
    peaks = [[max(np.convolve(per_setting[("0.05", bs)][s][2][:, 0], np.ones(3) / 3, "valid")) for s in (0, 1)]
             for bs in ("32", "64")]
    difference = np.subtract(*peaks)
    assert row[3].startswith(f"{difference.mean():+.1f} [")
    # Once kept (only the small files copied), experiments.verify recomputes the same table from the copies.
    from experiments import keep_runs

    keep_runs.main(["lr_batch_size", "--src", str(tmp_path / "runs"), "--dest", str(tmp_path / "kept")])
    assert not list((tmp_path / "kept").rglob("*.keras"))
    kept = plot._kept_tables(str(tmp_path / "kept"), ".x")
    assert list(kept) == ["lr_batch_size.runs.x", "lr_batch_size.pairs.x"]
    assert plot._kept_tables(str(tmp_path / "not_kept"), "") == {}
    assert kept["lr_batch_size.runs.x"]() + "\n\n" + kept["lr_batch_size.pairs.x"]() == table


@pytest.mark.needs_fmnist
def test_nudged_sgd_smoke(tmp_path):
    from experiments.nudged_sgd import plot, run

    results = run.main(["--smoke", "--out", str(tmp_path / "runs")])
    assert [r["config"]["gamma"] for r in results] == [0.1, 1.0]
    assert all(r["config"]["optimizer"] == "NSGD" for r in results)
    assert all("nsgd_alpha_1" in r["logs"] and finite(r["logs"]["nsgd_alpha_1"]) for r in results)
    # Same seed, same first measurement; gamma only acts once directions exist.
    np.testing.assert_allclose(results[0]["measurements"][0].eigenvalues, results[1]["measurements"][0].eigenvalues)
    table = plot.main(["--out", str(tmp_path / "runs"), "--figures", str(tmp_path / "fig"), "--early_epoch", "1"])
    assert os.path.getsize(tmp_path / "fig" / "nudged_sgd.png") > 10_000
    # Once kept, experiments.verify recomputes each of the three tables from the runs alone.
    kept = plot._kept_tables(str(tmp_path / "runs"), ".x")
    assert sorted(kept) == ["nudged_sgd.ahead.x", "nudged_sgd.pairs.x", "nudged_sgd.runs.x"]
    assert plot._kept_tables(str(tmp_path / "not_kept"), "") == {}
    assert kept["nudged_sgd.pairs.x"]() == plot.paired_against_sgd(plot.by_gamma(results), early_epoch=2)
    assert kept["nudged_sgd.runs.x"]() == plot.run_table(plot.by_gamma(results), early_epoch=2)
    assert kept["nudged_sgd.runs.x"]().splitlines()[2].startswith("| 0.1 | 1 | ")
    row = plot.table_row(results[1], early_epoch=1)
    assert row["test_at_best_val"] == results[1]["logs"]["test_accuracy"][row["best_val_epoch"] - 1]
    assert row["train_loss"] == results[1]["final"]["train_loss"]
    assert f"{row['lambda_1']:.1f}" in table
    # The numbers come from the runs' CSVs: the last lambda_1 measured, the distance after the last epoch.
    runs = check_run_files(tmp_path / "runs")
    ((folder, (_, eigenvalues)),) = [(f, r) for f, r in runs.items() if r[0]["config"]["gamma"] == 1.0]
    assert row["lambda_1"] == eigenvalues[-1, 0]
    history = read_csv(os.path.join(folder, "history.csv"))
    assert row["distance"] == pytest.approx(float(history[-1]["distance_from_init"]), rel=1e-6)
    assert all(float(r["nsgd_alpha_1"]) > 0 for r in history)  # NSGD had directions from the first epoch on
    # Seed by seed against SGD: gamma=0.1's row counts the seeds where it beats SGD, read from history.csv here.
    ((nsgd_folder, _),) = [(f, r) for f, r in runs.items() if r[0]["config"]["gamma"] == 0.1]
    ours, sgd = read_csv(os.path.join(nsgd_folder, "history.csv")), history
    best = [max(range(len(h)), key=lambda i, h=h: float(h[i]["val_accuracy"])) for h in (ours, sgd)]
    higher = float(ours[best[0]]["test_accuracy"]) > float(sgd[best[1]]["test_accuracy"])
    def later_half_loss(rows):  # epochs e = 1..n with e >= n / 2
        return np.mean([float(r["loss"]) for e, r in enumerate(rows, start=1) if e >= len(rows) / 2])

    lower_loss = later_half_loss(ours) < later_half_loss(sgd)
    (against,) = [r for r in table_rows(table.split("\n\n")[1]) if r[0] == "0.1"]
    assert against[1] == f"{int(higher)}/1" and against[3] == f"{int(lower_loss)}/1"
    (paired,) = table_rows(table.split("\n\n")[2])  # one seed: the difference alone, no interval
    difference = 100 * (float(ours[-1]["test_accuracy"]) - float(sgd[-1]["test_accuracy"]))
    assert paired[:2] == ["0.1", "1"] and paired[3] == f"{difference:+.1f} (one seed)"


@pytest.mark.needs_fmnist
def test_sgd_step_smoke_agrees_with_a_quadratic_model_for_short_steps(tmp_path):
    from experiments.sgd_step import plot, run

    analysis = run.main(["--smoke", "--out", str(tmp_path / "runs")])
    assert [r["epoch"] for r in analysis["records"]] == [0, 1, 2]
    with open(tmp_path / "runs" / "lr0.05" / "result.json") as f:
        assert "lanczos" not in json.load(f)
    assert run_results.load_results(str(tmp_path / "runs" / "lr0.05"))[0]["measurements"] == []  # measures itself
    for record in analysis["records"]:
        changes = plot.loss_changes(record)
        assert changes["eigenvectors"].shape == (2, 5) and changes["random"].shape == (5, 5)
        # The shortest step along e_1 (0.25 eta) is where the loss is closest to its quadratic model.
        predicted = plot.quadratic_prediction(record, analysis["learning_rate"])
        np.testing.assert_allclose(changes["eigenvectors"][0, 0], predicted[0, 0], rtol=0.1)
        assert np.all(np.asarray(record["alignment"]) <= 1)
    table = plot.main(["--out", str(tmp_path / "runs"), "--figures", str(tmp_path / "fig")])
    for name in ("step_losses.png", "alignment.png", "table.md"):
        assert os.path.getsize(tmp_path / "fig" / name) > 100, name
    check_run_files(tmp_path / "runs")
    rows, lr = table_rows(table), analysis["learning_rate"]
    assert [row[0] for row in rows] == [str(record["epoch"]) for record in analysis["records"]]
    for row, record in zip(rows, analysis["records"]):  # the table's numbers are the measured ones
        lambda_1, one = record["eigenvalues"][0], record["multipliers"].index(1.0)
        assert row[1:3] == [f"{lambda_1:.2f}", f"{lr * lambda_1:.2f}"]
        assert row[4] == f"{record['along_eigenvectors'][0][one] - record['loss']:+.2e}"
        assert row[6] == f"{record['full_step'][one] - record['loss']:+.2e}"
        assert row[8:10] == [f"{record['alignment'][0]:.3f}", f"{max(record['alignment']):.3f}"]
    from experiments import keep_runs

    keep_runs.keep(str(tmp_path / "runs"), str(tmp_path / "kept"))
    assert plot.step_table(plot.load_analysis(str(tmp_path / "kept"))[0]) == table


def test_edge_of_stability_statistics_on_known_numbers():
    from experiments.edge_of_stability import plot

    # Steps 0..8: the later half is steps 4, 6, 8; a lone spike moves the smoothed peak by a third only.
    assert plot.later_half_mean([0, 2, 4, 6, 8], [1.0, 100.0, 3.0, 5.0, np.nan]) == 4.0
    assert plot.smoothed_peak([1.0, 1.0, 10.0, 1.0, 1.0]) == 4.0
    assert plot.smoothed_peak([2.0, 4.0]) == 3.0
    assert plot.thresholds({"lr": 0.01, "momentum": 0.9, "optimizer": "sgd"}) == pytest.approx(
        {"2(1+b)/eta": 380.0, "2(1-b)/eta": 20.0})
    assert plot.thresholds({"lr": 0.001, "momentum": 0.0, "optimizer": "adam"})["38/eta"] == pytest.approx(38000.0)


@pytest.mark.needs_fmnist
def test_edge_of_stability_smoke_recomputes_its_measurements(tmp_path):
    import csv

    import keras

    from experiments.edge_of_stability import plot, run
    from tf_sharpest import models
    from tf_sharpest.analysis import batch_sharpness
    from tf_sharpest.hessian import top_eigenpairs

    results = run.main(["--smoke", "--out", str(tmp_path / "runs")])
    assert [r["config"]["part"] for r in results] == ["gd", "sgd", "momentum", "adam"]
    for result in results:
        assert not result["diverged"] and finite([m["lambda_full"] for m in result["records"]])
        assert result["records"][-1]["step"] == result["steps"]
    gd, sgd, momentum, adam = results
    assert [m["step"] for m in gd["records"]] == [0, 3, 6]  # every --gd_measure_every steps and after the last
    assert len(sgd["records"]) == scales.SMOKE.epochs + 1 and sgd["steps"] == 2 * 8  # 256 examples, batch 32
    assert np.isnan(adam["records"][0]["lambda_preconditioned"])  # no second moments before Adam's first step
    assert all(m["lambda_preconditioned"] > 0 for m in adam["records"][1:])

    # The last measurements, recomputed independently from the saved final weights.
    splits = training.load_data(run.SMOKE)
    x, y = splits[0]
    model = models.simple_cnn("root", input_shape=x.shape[1:], n_filters=run.SMOKE.n_filters)
    model.load_weights(str(tmp_path / "runs" / "sgd" / "bs32_seed0" / "final.weights.h5"))
    last = sgd["records"][-1]
    exact = top_eigenpairs(model, (x, y), k=1, loss=models.default_loss(), tol=1e-6).eigenvalues[0]
    np.testing.assert_allclose(last["lambda_full"], exact, rtol=2e-2)
    again = batch_sharpness(model, (x, y), batch_size=32, num_batches=2, seed=last["batch_sharpness_seed"],
                            loss=models.default_loss())
    np.testing.assert_allclose(last["batch_sharpness"], again.value, rtol=1e-4)
    keras.backend.clear_session()

    from experiments.edge_of_stability import final_check

    checks = final_check.main(["--out", str(tmp_path / "runs"), "--num_batches", "3"])
    assert len(checks) == 2  # the SGD and momentum runs; full-batch and Adam runs have no batch sharpness
    again = batch_sharpness(model, (x, y), batch_size=32, num_batches=3, seed=0, loss=models.default_loss())
    sgd_check = checks[1]  # runs in folder order: momentum, then sgd
    np.testing.assert_allclose([sgd_check["batch_sharpness"], sgd_check["ratio_of_means"]],
                               [again.value, again.ratio_of_means], rtol=1e-4)

    table = plot.main(["--out", str(tmp_path / "runs"), "--figures", str(tmp_path / "fig")])
    assert "both readings" in table
    for name in ("gd.png", "sgd.png", "momentum.png", "adam.png"):
        assert os.path.getsize(tmp_path / "fig" / name) > 10_000, name
    assert "### Part 1" in table and "### Part 4" in table
    assert "| 0.1 | 3 | 20.0 |" in table  # lr, measured every, 2/eta
    with open(tmp_path / "fig" / "summary.csv") as f:
        rows = {(row["part"], row["batch_size"]): row for row in csv.DictReader(f)}
    row = rows[("sgd", "32")]
    steps = [m["step"] for m in sgd["records"]]
    expected = np.mean([m["lambda_full"] for m in sgd["records"] if m["step"] >= max(steps) / 2])
    np.testing.assert_allclose(float(row["lambda_full_later_half"]), expected, rtol=1e-12)
    assert float(row["threshold 2/eta"]) == pytest.approx(2 / 0.05)
    assert float(rows[("momentum", "32")]["threshold 2(1+b)/eta"]) == pytest.approx(2 * 1.9 / 0.005)
    assert float(rows[("adam", "full")]["threshold 38/eta"]) == pytest.approx(38 / 0.001)
    assert float(row["val_accuracy_best"]) == max(sgd["logs"]["val_accuracy"])
    # Once kept (the small files, the final checks among them), verify recomputes every table from the copies, and
    # the paired table from the runs equals the one from summary.csv read back.
    from experiments import keep_runs

    keep_runs.main(["edge_of_stability", "--src", str(tmp_path / "runs"), "--dest", str(tmp_path / "kept")])
    assert not list((tmp_path / "kept").rglob("*.h5")) and list((tmp_path / "kept").rglob("final_check.json"))
    kept = {name: make() for name, make in plot.kept_tables("edge_of_stability", plot.TABLE_NAMES,
                                                             str(tmp_path / "kept"), plot.kept_study_tables).items()}
    assert list(kept) == [f"edge_of_stability.{name}" for name in plot.TABLE_NAMES]
    assert all(kept[f"edge_of_stability.{name}"] in table for name in plot.TABLE_NAMES)
    assert kept["edge_of_stability.paired"] == plot.paired_summary_table(
        plot.read_summary(str(tmp_path / "fig" / "summary.csv")))
    assert [r[:2] for r in table_rows(kept["edge_of_stability.paired"])] == [["momentum", "32"], ["sgd", "32"]]


# -- figures and statistics on small synthetic runs (issue 27) ---------------------------------------------------

def _run(lr, batch_size, seed, lambdas, *, gamma=None, losses=None, test_accuracy=None):
    """A run as experiments.results.load_results returns it: config, logs and one measurement per epoch start."""
    lambdas = np.asarray(lambdas, float).reshape(len(lambdas), -1)
    n = len(lambdas) - 1
    losses = losses if losses is not None else list(np.linspace(1.0, 0.5, n))
    return {"config": {"lr": lr, "batch_size": batch_size, "gamma": gamma, "seed": seed, "top_k": lambdas.shape[1],
                       "augment": False, "scale": {}},
            "logs": {"loss": losses, "val_accuracy": list(np.linspace(0.5, 0.7, n)),
                     "test_accuracy": test_accuracy if test_accuracy is not None else list(np.linspace(0.5, 0.7, n))},
            "final": {"train_loss": losses[-1], "diverged": False, "distance_from_init": 1.0},
            "measurements": [Measurement(e, 10 * e, row, 5, 0.1, 1.0) for e, row in enumerate(lambdas)]}


def _lines(ax):
    return {line.get_label(): line for line in ax.get_lines()}


def test_paired_difference_by_hand():
    first, second = [0.7634, 0.7342, 0.7514], [0.7198, 0.7471, 0.7375]  # study 3, gamma=0.01 against SGD
    d = [0.0436, -0.0129, 0.0139]
    mean = sum(d) / 3
    sd = np.sqrt(sum((x - mean) ** 2 for x in d) / 2)
    t_975_2 = 4.302652729911275  # Student's t, 97.5% quantile, 2 degrees of freedom (printed tables: 4.303)
    got = statistics.paired_difference(first, second)
    assert got["n"] == 3
    np.testing.assert_allclose([got["mean"], got["sd"], got["t"]], [mean, sd, mean / (sd / np.sqrt(3))], rtol=1e-9)
    np.testing.assert_allclose([got["low"], got["high"]], [mean - t_975_2 * sd / np.sqrt(3),
                                                           mean + t_975_2 * sd / np.sqrt(3)], rtol=1e-9)
    assert got["t"] == pytest.approx(0.911, abs=1e-3)  # the t = 0.91
    assert statistics.paired_cell(first, second, "+.1f", 100) == "+1.5 [-5.5, +8.5], t = 0.91"
    assert statistics.paired_cell([1.0], [0.5]) == "+0.500 (one seed)"
    with pytest.raises(ValueError, match="one value per seed"):
        statistics.paired_difference([1.0, 2.0], [1.0])


def test_kept_tables_name_each_table_and_read_the_runs_once(tmp_path):
    from experiments.results import kept_tables

    reads = []

    def tables_of(folder):
        reads.append(folder)
        return ["| first |", "| second |"]

    assert kept_tables("study", ("a", "b"), str(tmp_path / "not_kept"), tables_of) == {}
    entries = kept_tables("study", ("a", "b"), str(tmp_path), tables_of, ".x")
    assert list(entries) == ["study.a.x", "study.b.x"] and reads == []  # nothing read until asked
    assert [entries["study.b.x"](), entries["study.a.x"](), entries["study.b.x"]()] == ["| second |", "| first |",
                                                                                        "| second |"]
    assert reads == [str(tmp_path)]


def test_seed_mean_is_arithmetic_and_peak_in_last_window():
    x, mean = statistics.seed_mean([([0, 1, 2], [1.0, 100.0, 4.0]), ([0, 1], [3.0, 1.0])])
    np.testing.assert_array_equal(x, [0, 1])
    np.testing.assert_allclose(mean, [2.0, 50.5])  # the geometric mean would be sqrt(3) and 10
    assert statistics.peak_in_last_window([1.0, 2.0, 3.0, 4.0, 5.0])  # still rising: no peak seen
    assert not statistics.peak_in_last_window([1.0, 5.0, 6.0, 5.0, 1.0, 1.0])
    assert statistics.peak_in_last_window([1.0, 2.0])  # fewer than a window: nothing but the end


def test_lr_batch_size_figure_mean_threshold_and_last_window():
    from experiments import figures
    from experiments.lr_batch_size import plot
    from experiments.results import by_setting

    curves = ((0.01, ([1.0, 100.0, 150.0, 120.0], [9.0, 200.0, 170.0, 160.0])),
              (0.1, ([2.0, 30.0, 20.0, 10.0], [4.0, 10.0, 12.0, 14.0])))
    lr_runs = [_run(lr, 128, seed, [[v, v / 2] for v in values])
               for lr, values_by_seed in curves for seed, values in enumerate(values_by_seed)]
    batch_runs = [_run(0.05, b, 0, [[v, v / 2] for v in values])
                  for b, values in ((32, [1.0, 20.0, 15.0, 5.0, 4.0]), (128, [1.0, 30.0, 45.0, 60.0, 70.0]))]
    sweeps = {"lr": by_setting(lr_runs, "lr", "batch_size"), "batch": by_setting(batch_runs, "batch_size", "lr")}
    plt = figures.pyplot()
    fig = plot.draw_figure(plt, sweeps)
    lines = _lines(fig.axes[0])  # lambda_1 across lr
    np.testing.assert_allclose(lines["$\\eta$ = 0.01"].get_ydata(), [5.0, 150.0, 160.0, 140.0])  # arithmetic
    np.testing.assert_allclose(lines["$2/\\eta$ = 200"].get_ydata(), [200, 200])
    np.testing.assert_allclose(lines["$2/\\eta$ = 20"].get_ydata(), [20, 20])
    np.testing.assert_allclose(_lines(fig.axes[1])["$\\eta$ = 0.1"].get_ydata(), [1.5, 10.0, 8.0, 6.0])  # lambda_2
    batch_lines = _lines(fig.axes[2])
    np.testing.assert_allclose(batch_lines["$2/\\eta$ = 40"].get_ydata(), [40, 40])
    assert sum(label.startswith("$2/") for label in batch_lines) == 1  # one eta, one line
    plt.close(fig)
    # Batch 128's smoothed peak (window means 25.3, 45, 58.3) is its last window: flagged; batch 32's (12, 13.3, 8)
    # is not.
    summaries = [plot.run_summary(r) for r in batch_runs]
    assert [s["peak_in_last_window_1"] for s in summaries] == [False, True]
    # Paired differences over seeds: lr 0.1 minus lr 0.01, smoothed peak of lambda_1, by hand.
    groups = {(0.1,): [plot.run_summary(r) for r in lr_runs[2:]], (0.01,): [plot.run_summary(r) for r in lr_runs[:2]]}
    peaks_01 = [np.mean([30.0, 20.0, 10.0]), np.mean([10.0, 12.0, 14.0])]
    peaks_001 = [np.mean([100.0, 150.0, 120.0]), np.mean([200.0, 170.0, 160.0])]
    (row,) = plot.pairwise_rows(groups, "smoothed_peak_1", "lr", "peak")
    assert row == ["peak", "lr 0.1 < lr 0.01", "2/2", statistics.paired_cell(peaks_01, peaks_001, "+.1f")]
    d = np.subtract(peaks_01, peaks_001)
    assert row[3].startswith(f"{d.mean():+.1f} [")


def test_nudged_sgd_figure_thresholds_and_paired_table():
    from experiments import figures
    from experiments.nudged_sgd import plot

    runs = []
    for gamma, by_seed in ((0.1, ([10.0, 500.0, 600.0], [10.0, 300.0, 700.0])), (1.0, ([10.0, 150.0, 200.0],
                                                                                       [10.0, 250.0, 210.0]))):
        for seed, values in enumerate(by_seed):
            losses = [1.0, 0.6] if gamma == 0.1 else [1.0, 0.7]
            test = [0.60 + 0.01 * seed, 0.70 + (0.02 if gamma == 0.1 else 0.0) + 0.03 * seed]
            runs.append(_run(0.01, 128, seed, values, gamma=gamma, losses=losses, test_accuracy=test))
    groups = plot.by_gamma(runs)
    plt = figures.pyplot()
    fig = plot.draw_figure(plt, groups)
    lines = _lines(fig.axes[0])
    np.testing.assert_allclose(lines["$\\gamma$ = 0.1"].get_ydata(), [10.0, 400.0, 650.0])
    np.testing.assert_allclose(lines["$2/(\\gamma\\eta)$ = 2000"].get_ydata(), [2000, 2000])
    np.testing.assert_allclose(lines["$2/(\\gamma\\eta)$ = 200"].get_ydata(), [200, 200])
    assert fig.axes[0].get_ylim()[1] >= 2000  # within 3x of the largest value: on the axis
    plt.close(fig)
    # Matched training loss: gamma=0.1 reaches 0.7 (SGD's best) at epoch 2, SGD at epoch 2.
    ours, sgd = runs[0], runs[2]
    assert plot.at_matched_loss(ours, sgd) == (ours["logs"]["test_accuracy"][1], sgd["logs"]["test_accuracy"][1],
                                               0.7, 2, 2)
    table = plot.paired_against_sgd(groups, early_epoch=1)
    (row,) = table_rows(table)
    assert row[:2] == ["0.1", "2"]
    # Final test accuracy: +2 points in both seeds -> mean +2.0, sd 0: the interval is the point itself.
    assert row[3] == "+2.0 [+2.0, +2.0], t = inf"
    later = [np.mean([500.0, 600.0]) - np.mean([150.0, 200.0]), np.mean([300.0, 700.0]) - np.mean([250.0, 210.0])]
    assert row[7] == statistics.paired_cell(later, [0.0, 0.0], "+.0f")


def test_edge_of_stability_minibatch_figure_keeps_small_values_and_shows_lambda_full():
    from experiments import figures
    from experiments.edge_of_stability import plot

    def run(seed, sharpness):
        records = [{"step": 10 * e, "epoch": e, "lambda_full": 5.0 + 10 * e, "lambda_512": 5.2 + 10 * e,
                    "batch_sharpness": s} for e, s in enumerate(sharpness)]
        return {"config": {"part": "sgd", "optimizer": "sgd", "lr": 0.05, "momentum": 0.0, "batch_size": 32,
                           "seed": seed, "n_train": 3000, "sample_sizes": [512]}, "records": records,
                "logs": {"val_accuracy": [0.5, 0.6, 0.7]}, "diverged": False}

    groups = plot.group([run(0, [-0.5, 0.02, 20.0, 30.0]), run(1, [-1.5, 0.04, 22.0, 30.0])])
    plt = figures.pyplot()
    fig = plot.minibatch_figure(plt, groups, "SGD")
    ax = fig.axes[0]
    assert ax.get_yscale() == "symlog"
    lines = _lines(ax)
    sharpness = lines["batch sharpness"]
    np.testing.assert_allclose(sharpness.get_ydata(), [-1.0, 0.03, 21.0, 30.0])  # mean over seeds, none dropped
    assert ax.get_ylim()[0] <= -1.5  # the most negative seed is inside the axes
    full = lines["$\\lambda_1$, every example"]
    assert full.get_zorder() > max(line.get_zorder() for line in ax.get_lines() if line is not full)
    assert lines["$\\lambda_1$, 512-sample"].get_linestyle() == "--"
    np.testing.assert_allclose(lines["2/$\\eta$ = 40"].get_ydata(), [40, 40])
    assert fig.axes[-1].get_yscale() == "symlog"
    plt.close(fig)
    # lambda_1 against the batch sharpness, paired by seed, over the later half (steps 20 and 30): seed 0, lambda_1
    # (25 + 35) / 2 = 30 and sharpness (20 + 30) / 2 = 25; seed 1, 30 and 26. Differences 5, 4: t = 4.5 / 0.5.
    (row,) = table_rows(plot.minibatch_table(groups))
    assert row[-4] == statistics.paired_cell([30.0, 30.0], [25.0, 26.0], "+.1f") == "+4.5 [-1.9, +10.9], t = 9.00"


def test_sgd_step_losses_figure_is_a_readable_grid():
    from experiments import figures
    from experiments.sgd_step import plot

    def record(epoch):
        return {"epoch": epoch, "loss": 1.0, "multipliers": [0.25, 0.5, 1.0, 2.0, 4.0],
                "along_eigenvectors": [[0.9, 0.8, 0.9, 1.2, 2.0], [0.99, 0.98, 0.97, 0.99, 1.1]],
                "along_random": [[1.0] * 5] * 3, "full_step": [0.9, 0.8, 0.85, 1.1, 3.0],
                "eigenvalues": [40.0, 10.0], "alignment": [0.9, 0.1], "gradient_norm": 1.0}

    plt = figures.pyplot()
    fig = plot.step_losses_figure(plt, [record(e) for e in (0, 1, 2, 4, 8)], 0.05)
    width, height = fig.get_size_inches()
    assert width / height < 2  # was 18 x 3.9 inches: a 1980 x 429 strip at 110 dpi
    panels = [ax for ax in fig.axes if ax.axison]
    assert len(panels) == 5 and all(ax.get_yscale() == "symlog" for ax in panels)
    assert panels[0].get_title().startswith("after 0 epoch(s)") and "2.00, 0.50" in panels[0].get_title()
    (legend_cell,) = [ax for ax in fig.axes if not ax.axison]
    assert legend_cell.get_legend() is not None
    plt.close(fig)


def test_edge_of_stability_paired_table_from_a_summary_by_hand(tmp_path):
    from experiments.edge_of_stability import plot

    path = tmp_path / "summary.csv"
    header = "part,batch_size,lr,seed,lambda_full_later_half,batch_sharpness_later_half,threshold 2/eta\n"
    rows = ["gd,full,0.1,0,30.0,,20.0\n",  # full batch: no batch sharpness, left out
            "sgd,32,0.05,1,44.0,30.0,40.0\n", "sgd,32,0.05,0,40.0,30.0,40.0\n", "sgd,32,0.05,2,42.0,33.0,40.0\n"]
    path.write_text(header + "".join(rows))
    (row,) = table_rows(plot.paired_summary_table(plot.read_summary(str(path))))
    # Seeds 0, 1, 2: differences 10, 14, 9, mean 11, sd sqrt(7), t = 11 / (sqrt(7) / sqrt(3)).
    assert row[:6] == ["sgd", "32", "0.05", "0, 1, 2", "40.0 / 44.0 / 42.0", "30.0 / 30.0 / 33.0"]
    half = 4.302652729911275 * np.sqrt(7) / np.sqrt(3)
    assert row[6] == f"+11.0 [{11 - half:+.1f}, {11 + half:+.1f}], t = {11 / (np.sqrt(7) / np.sqrt(3)):.2f}"
    # lambda_1 / 40 = 1.0, 1.1, 1.05: mean 1.05, sd 0.05, interval 1.05 -+ 4.303 * 0.05 / sqrt(3).
    ratio_half = 4.302652729911275 * 0.05 / np.sqrt(3)
    assert row[7:] == ["2/eta = 40", f"1.05 [{1.05 - ratio_half:.2f}, {1.05 + ratio_half:.2f}]"]


# -- study 5's stationarity campaign (issue 27 item 2) -----------------------------------------------------------

def test_edge_of_stability_stationarity_by_hand():
    from scipy import stats

    from experiments.edge_of_stability import stationarity

    steps = np.arange(0, 101, 10.0)  # T = 100: later half 50..100, windows [50, 75) = 50, 60, 70 and [75, 100]
    flat = np.array([0, 0, 0, 0, 0, 10.0, 10.2, 9.8, 10.0, 10.2, 9.8])
    s = stationarity.stationarity(steps, flat)
    assert s["window_means"] == pytest.approx((10.0, 10.0)) and s["change"] == pytest.approx(0.0, abs=1e-12)
    fit = stats.linregress(steps[5:], flat[5:])  # an independent least-squares line of the later half
    half = stats.t.ppf(0.975, 4) * fit.stderr
    scale = 50 / 10.0  # drift over T/2 relative to the later-half mean
    assert s["drift"] == pytest.approx(fit.slope * scale)
    assert (s["drift_low"], s["drift_high"]) == pytest.approx(((fit.slope - half) * scale, (fit.slope + half) * scale))
    assert s["n"] == 6 and s["stationary"]

    ramp = steps.copy()  # still rising: window means 60 and 90 (+50%), drift 1 * 50 / 75 = 2/3 exactly
    s = stationarity.stationarity(steps, ramp)
    assert s["window_means"] == pytest.approx((60.0, 90.0)) and s["change"] == pytest.approx(0.5)
    assert s["drift"] == pytest.approx(2 / 3) and s["drift_low"] == pytest.approx(2 / 3)
    assert not s["stationary"]
    # A 4% step between the windows passes at 5% and fails at 3%; NaNs (Adam's step 0) are skipped.
    step_up = np.r_[np.nan, np.ones(7), 1.04, 1.04, 1.04]
    assert stationarity.stationarity(steps, step_up)["change"] == pytest.approx(0.04)
    assert not stationarity.stationarity(steps, step_up, tol=0.03)["stationary"]
    assert not stationarity.stationarity([0, 10, 20], [1.0, 1.0, 1.0])["stationary"]  # one point per window


def test_edge_of_stability_inverse_lr_fit_by_hand():
    from scipy import stats

    from experiments.edge_of_stability import stationarity

    lrs = np.array([0.02, 0.04, 0.08, 0.02, 0.04, 0.08])
    exact = stationarity.inverse_lr_fit(lrs, 2.0 / lrs)  # lambda_1 = 2/eta exactly: slope 2, intercept 0
    assert exact["slope"] == pytest.approx(2.0) and exact["intercept"] == pytest.approx(0.0, abs=1e-9)
    assert exact["slope0"] == pytest.approx(2.0) and exact["slope_high"] - exact["slope_low"] == pytest.approx(0.0,
                                                                                                              abs=1e-9)
    noise = np.array([1.0, -2.0, 0.5, -1.0, 2.0, -0.5])
    values = 2.6 / lrs + 3.0 + noise
    fit = stationarity.inverse_lr_fit(lrs, values)
    reference = stats.linregress(1 / lrs, values)
    q = stats.t.ppf(0.975, 4)
    assert fit["n"] == 6 and fit["slope"] == pytest.approx(reference.slope)
    assert (fit["slope_low"], fit["slope_high"]) == pytest.approx((reference.slope - q * reference.stderr,
                                                                   reference.slope + q * reference.stderr))
    assert (fit["intercept_low"], fit["intercept_high"]) == pytest.approx(
        (reference.intercept - q * reference.intercept_stderr, reference.intercept + q * reference.intercept_stderr))
    x = 1 / lrs  # through the origin: slope0 = sum(xy) / sum(x^2), standard error from n - 1 degrees of freedom
    slope0 = np.sum(x * values) / np.sum(x * x)
    half0 = stats.t.ppf(0.975, 5) * np.sqrt(np.sum((values - slope0 * x) ** 2) / 5 / np.sum(x * x))
    assert (fit["slope0"], fit["slope0_low"], fit["slope0_high"]) == pytest.approx((slope0, slope0 - half0,
                                                                                     slope0 + half0))
    assert np.isnan(stationarity.inverse_lr_fit([0.1, 0.1], [20.0, 21.0])["slope"])  # one learning rate: no line


def test_edge_of_stability_campaign_tables_from_synthetic_runs(tmp_path):
    from experiments.edge_of_stability import stationarity

    def write(folder, config, values):
        steps = np.arange(0, 41, 4.0)  # later half: steps 20..40 (6 points)
        records = [{"step": s, "epoch": s, "lambda_full": v, "batch_sharpness": v / 2} for s, v in zip(steps, values)]
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "result.json").write_text(json.dumps(
            {"config": config, "records": records, "steps": 40, "diverged": False, "logs": {}}))

    base = {"part": "sgd", "optimizer": "sgd", "momentum": 0.0, "batch_size": 32, "n_train": 3000}
    for lr in (0.02, 0.05, 0.1):
        for seed in (0, 1):
            write(f"sgd/lr{lr:g}_seed{seed}", {**base, "lr": lr, "seed": seed},
                  np.r_[np.linspace(1, 2.4 / lr, 5), np.full(6, 2.4 / lr + (0.5 if seed else -0.5))])
    runs = stationarity.load_runs(str(tmp_path))
    (lam, sharp) = table_rows(stationarity.fit_table(runs))
    # lambda_1 later half = 2.4/eta -+ 0.5: slope 2.4 exactly, intercept 0, 6 points; the sharpness half of that.
    fit = stationarity.inverse_lr_fit([0.02, 0.02, 0.05, 0.05, 0.1, 0.1],
                                      [120 - 0.5, 120.5, 47.5, 48.5, 23.5, 24.5])
    assert lam[:4] == ["sgd: sgd, batch 32, 3,000 ex.", "lambda_full", "0.02, 0.05, 0.1", "6"]
    assert lam[4] == f"2.40 [{fit['slope_low']:.2f}, {fit['slope_high']:.2f}]" and lam[7] == "2 (x1.20)"
    assert sharp[1] == "batch_sharpness" and sharp[6].startswith("1.20") and lam[8] == sharp[8] == "6/6"
    # The smoothed peaks by hand: seed 1's is its plateau 2.4/eta + 0.5; seed 0's is the window (2.4/eta, the
    # plateau 2.4/eta - 0.5 twice), 2.4/eta - 1/3.
    peaks = [2.4 / lr + (0.5 if seed else -1 / 3) for lr in (0.02, 0.05, 0.1) for seed in (0, 1)]
    peak = stationarity.inverse_lr_fit([0.02, 0.02, 0.05, 0.05, 0.1, 0.1], peaks)
    assert lam[9] == f"{peak['slope0']:.2f} [{peak['slope0_low']:.2f}, {peak['slope0_high']:.2f}] " \
                     f"(x{peak['slope0'] / 2:.2f})"
    rows = table_rows(stationarity.stationarity_table(runs))
    assert len(rows) == 12 and rows[0][:5] == ["sgd: sgd, batch 32, 3,000 ex.", "0.02", "0", "40", "lambda_full"]
    assert rows[0][5] == f"{0.02 * 119.5 / 2:.3f} / {0.02 * 119.5 / 2:.3f}" and rows[0][6] == "+0.0%"
    assert rows[0][8] == "yes"
    # The figure: one panel for the one setting; every curve is eta x the quantity (batch sharpness, the
    # theory's quantity, solid and first), the predicted slope 2 is the dashed line, the later half is shaded.
    from experiments.figures import pyplot

    plt = pyplot()
    fig = stationarity.campaign_figure(plt, runs)
    (ax,) = [a for a in fig.axes if a.get_visible()]
    curves = [line for line in ax.get_lines() if len(line.get_xdata()) == 11]
    assert len(curves) == 12 and [line.get_linestyle() for line in curves[:2]] == ["-", "--"]
    first = sorted(runs, key=lambda r: (r["config"]["lr"], r["config"]["seed"]))[0]
    np.testing.assert_allclose(curves[0].get_ydata(), [0.02 * r["batch_sharpness"] for r in first["records"]])
    np.testing.assert_allclose(curves[1].get_ydata(), [0.02 * r["lambda_full"] for r in first["records"]])
    (threshold,) = [line for line in ax.get_lines() if line.get_linestyle() == "--" and len(line.get_xdata()) == 2]
    assert list(threshold.get_ydata()) == [2.0, 2.0] and ax.get_yscale() == "symlog"
    (shade,) = ax.patches
    assert shade.get_x() == pytest.approx(20.0) and shade.get_width() == pytest.approx(20.0)
    plt.close(fig)


def test_the_eoss_settings_name_their_loss_so_the_control_reads_as_one():
    from experiments.edge_of_stability import stationarity

    eoss = {"part": "eoss", "optimizer": "sgd", "model": "mlp", "batch_size": 16, "n_train": 4096, "lr": 0.01}
    describe = stationarity.describe_setting
    assert describe(stationarity.setting({**eoss, "loss": "squared"})) == \
        "eoss: sgd, batch 16, 4,096 ex., mlp, squared loss"
    assert describe(stationarity.setting({**eoss, "loss": "cross_entropy"})) == \
        "eoss: sgd, batch 16, 4,096 ex., mlp, cross-entropy"
    sgd = {"part": "sgd", "optimizer": "sgd", "batch_size": 128, "n_train": 3000, "lr": 0.05}
    assert describe(stationarity.setting(sgd)) == "sgd: sgd, batch 128, 3,000 ex."  # study 5's own loss: unnamed


def test_edge_of_stability_campaign_plan_and_default_plan():
    from experiments.edge_of_stability import campaign, run

    default = run.planned(run.parse_args([]), run.DEFAULT)
    assert [f for f, _, _ in default][:2] == ["gd/lr0.03_seed0", "gd/lr0.03_seed1"] and len(default) == 33
    assert all("epochs" not in c and "beta1" not in c for _, c, _ in default)  # the study's runs as before
    args = run.parse_args(["--campaign", "stationarity"])
    plan = run.planned(args, run.DEFAULT)
    by_part = {}
    for folder, config, measure in plan:
        by_part.setdefault(config["part"], []).append((folder, config, measure))
    assert {p: len(v) for p, v in by_part.items()} == {"gd": 6, "sgd": 18, "sgd_data": 12, "momentum": 12,
                                                       "adam": 12, "eoss": 6}
    for part, runs in by_part.items():  # every setting at three learning rates
        settings = {}
        for _, c, _ in runs:
            settings.setdefault((c.get("batch_size"), c["n_train"], c.get("beta1")), set()).add(c["lr"])
        assert all(len(lrs) == 3 for lrs in settings.values()), part
    # 3,000 steps whatever the batch: 32 epochs of 94 steps at batch 32, 500 of 6 at batch 512, ~40 measurements.
    sgd = {c["batch_size"]: (c["epochs"], m["measure_every"]) for _, c, m in by_part["sgd"]}
    assert sgd == {32: (32, 1), 128: (125, 4), 512: (500, 13)}
    assert campaign.fit_length(3000, 512, 3000, 40) == (500, 13)
    assert {c["beta1"] for _, c, _ in by_part["adam"]} == {0.9, 0.5}
    (_, eoss, measure) = by_part["eoss"][0]
    assert (eoss["model"], eoss["hidden"], eoss["batch_size"], eoss["n_train"]) == ("mlp", 512, 16, 4096)
    assert measure["num_batches"] == 64
    with pytest.raises(SystemExit):
        run.parse_args(["--parts", "eoss"])  # campaign parts need --campaign
    with pytest.raises(SystemExit):
        run.parse_args(["--sgd_lrs", "0.05,0.1"])  # the study's parts run one learning rate


def test_edge_of_stability_eoss_mlp_and_squared_loss():
    import keras

    from experiments.edge_of_stability import campaign

    keras.utils.set_random_seed(0)
    model = campaign.eoss_mlp((28, 28, 1), hidden=512, init_scale=0.2)
    first = model.layers[1].kernel.numpy()  # 784 x 512
    assert first.shape == (784, 512) and model.layers[-1].name == "logits"
    np.testing.assert_allclose(first.std(), 0.2 * np.sqrt(2 / 784), rtol=0.01)  # Kaiming normal (fan in) x 0.2
    assert not np.any(model.layers[1].bias.numpy())
    y_pred = np.array([[0.5, -1.0, 2.0], [0.0, 0.0, 0.0]], np.float32)
    loss = campaign.squared_loss(np.array([2, 0]), y_pred).numpy()
    np.testing.assert_allclose(loss, [0.25 + 1.0 + 1.0, 1.0])  # sum over classes of (f - onehot)^2


@pytest.mark.needs_fmnist
def test_edge_of_stability_campaign_eoss_smoke_recomputes_its_measurements(tmp_path):
    from experiments.edge_of_stability import campaign, run
    from tf_sharpest.analysis import batch_sharpness
    from tf_sharpest.hessian import top_eigenpairs

    (result,) = run.main(["--campaign", "stationarity", "--smoke", "--parts", "eoss", "--eoss_lrs", "0.01", "--out",
                          str(tmp_path)])
    config = result["config"]
    assert (config["model"], config["loss"], config["batch_size"], config["n_train"]) == ("mlp", "squared", 16, 128)
    assert result["steps"] == 16 and [m["step"] for m in result["records"]] == [0, 8, 16]  # 2 epochs, each measured
    x, y = training.load_data(run.SMOKE.__class__(**{**config["scale"], "n_examples": 128}))[0]
    model = campaign.eoss_mlp(x.shape[1:], config["hidden"], config["init_scale"])
    model.load_weights(str(tmp_path / "eoss" / "bs16_lr0.01_seed0" / "final.weights.h5"))
    last = result["records"][-1]
    # The squared loss's Hessian, independently: lambda_1 to tight tolerance and the same batches drawn again.
    exact = top_eigenpairs(model, (x, y), k=1, loss=campaign.squared_loss, tol=1e-6).eigenvalues[0]
    np.testing.assert_allclose(last["lambda_full"], exact, rtol=2e-2)
    again = batch_sharpness(model, (x, y), batch_size=16, num_batches=4, seed=last["batch_sharpness_seed"],
                            loss=campaign.squared_loss)
    np.testing.assert_allclose(last["batch_sharpness"], again.value, rtol=1e-4)
    pred = model.predict(x, verbose=0)
    np.testing.assert_allclose(last["train_loss"], np.mean(np.sum((pred - np.eye(10)[y]) ** 2, axis=1)), rtol=1e-4)
