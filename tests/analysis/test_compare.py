"""Per-class comparison against a baseline: ΔACC, undistillable classes, seed averaging, ΔPA and Pearson r,
the ``kdhub compare`` command on real runs logged to MLflow, and the ``compare:`` section of studies."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from scipy import stats

from kdhub.commands.cli import main
from kdhub.contract.errors import ConfigError, KdhubError
from kdhub.contract.tables import AGREEMENT, PER_CLASS_ACCURACY
from kdhub.engine.runner import run
from kdhub.study import StudyConfig, expand, run_study
from kdhub.tracking import Tracker
from kdhub_analysis.compare import (
    CompareError,
    Comparison,
    average_over_seeds,
    compare_runs,
    compare_tables,
    pearson,
    save_figures,
)

NAN = math.nan


def per_class_acc(y: list[int], pred: list[int], num_classes: int) -> list[float]:
    """acc_m in % with numpy, NaN for an empty class (docs/reference-values.md, per-class accuracy)."""
    y, pred = np.asarray(y), np.asarray(pred)
    with np.errstate(invalid="ignore"):
        return [100 * float(np.mean(pred[y == m] == m)) if (y == m).any() else NAN for m in range(num_classes)]


# the pure comparison ------------------------------------------------------------------------------


def test_reference_values_example():  # docs/reference-values.md, the comparison's worked example
    # y = [0,0,1,1,2]; run predicts [0,1,1,1,0] -> acc [1/2, 2/2, 0/1]; baseline [0,0,1,0,2] -> [2/2, 1/2, 1/1]
    y = [0, 0, 1, 1, 2]
    run_acc = per_class_acc(y, [0, 1, 1, 1, 0], 3)
    base_acc = per_class_acc(y, [0, 0, 1, 0, 2], 3)
    assert run_acc == [50.0, 100.0, 0.0]
    assert base_acc == [100.0, 50.0, 100.0]
    c = compare_tables([base_acc], [run_acc])
    assert c.delta_acc == [-50.0, 50.0, -100.0]  # ΔACC = [-.5, +.5, -1] in points
    assert c.undistillable == [0, 2]
    assert c.undistillable_count == 2
    assert c.mean_delta_acc == pytest.approx(-100 / 3)
    table = c.table()
    assert table["undistillable"] == [True, False, True]
    assert table["class"] == [0, 1, 2]


def test_sign_convention_run_minus_baseline():
    helped = compare_tables([[60.0, 70.0]], [[65.0, 80.0]])
    assert helped.delta_acc == [5.0, 10.0]
    assert helped.undistillable == []
    assert helped.mean_delta_acc == 7.5
    hurt = compare_tables([[65.0, 80.0]], [[60.0, 70.0]])  # swapped sides: every class is hurt
    assert hurt.delta_acc == [-5.0, -10.0]
    assert hurt.undistillable == [0, 1]


def test_tolerance_is_strict_and_in_points():
    base = [[50.0, 50.0, 50.0, 50.0]]
    mine = [[49.5, 48.5, 52.0, 50.0]]  # ΔACC = [-0.5, -1.5, +2, 0]
    assert compare_tables(base, mine).undistillable == [0, 1]  # tol 0: 0 itself is not below -0
    assert compare_tables(base, mine, tol=0.5).undistillable == [1]  # -0.5 is not < -0.5
    assert compare_tables(base, mine, tol=1.5).undistillable == []
    with pytest.raises(CompareError, match="tol"):
        compare_tables(base, mine, tol=-1)


def test_seeds_are_averaged_before_differencing_nan_left_out():
    # class 0: baseline seed 0 had no sample (NaN). Averaging first: mean(run) 60 - mean(base) 80 = -20;
    # differencing seeds first would give mean([NaN, 70 - 80]) = -10. kdhub averages first.
    base = [[NAN, 50.0, NAN], [80.0, 70.0, NAN]]
    mine = [[50.0, 40.0, NAN], [70.0, 80.0, NAN]]
    c = compare_tables(base, mine)
    assert c.acc_baseline[:2] == [80.0, 60.0]
    assert c.acc_run[:2] == [60.0, 60.0]
    assert c.delta_acc[:2] == [-20.0, 0.0]
    assert math.isnan(c.delta_acc[2])
    per_seed_first = np.nanmean((np.array(mine) - np.array(base))[:, 0])
    assert per_seed_first == -10.0
    assert c.delta_acc[0] != per_seed_first
    assert c.undistillable == [0]  # NaN is never undistillable ...
    assert c.mean_delta_acc == -10.0  # ... and is left out of the mean: (-20 + 0) / 2


def test_sides_may_have_different_seed_counts():
    c = compare_tables([[70.0, 10.0]], [[60.0, 0.0], [80.0, 0.0], [100.0, 30.0]])
    assert c.acc_run == [80.0, 10.0]
    assert c.delta_acc == [10.0, 0.0]
    assert average_over_seeds([[1.0, NAN], [3.0, NAN]])[0] == 2.0
    with pytest.raises(CompareError, match="2 classes and the run 3"):
        compare_tables([[1.0, 2.0]], [[1.0, 2.0, 3.0]])


def test_pearson_against_numpy_and_the_t_distribution():
    x, y = [1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 1.0, 4.0, 3.0, 5.0]
    r, p, n = pearson(x, y)
    # by hand: dx = [-2,-1,0,1,2], dy = [-1,-2,1,0,2], sxy = 8, sxx = syy = 10 -> r = 0.8
    assert r == pytest.approx(0.8)
    assert r == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert n == 5
    # two-sided p from t = r sqrt((n-2)/(1-r^2)) with the closed-form Student-t CDF for 3 degrees of freedom
    t = 0.8 * math.sqrt(3 / (1 - 0.64))
    cdf = 0.5 + (t / math.sqrt(3) / (1 + t * t / 3) + math.atan(t / math.sqrt(3))) / math.pi
    assert p == pytest.approx(2 * (1 - cdf), rel=1e-9)  # 0.1041
    r2, p2, n2 = pearson([*x, NAN, 7.0], [*y, 3.0, NAN])  # pairs with a NaN are dropped
    assert (r2, p2, n2) == pytest.approx((r, p, 5))
    assert all(math.isnan(v) for v in pearson([1.0, 2.0], [1.0, 3.0])[:2])  # fewer than 3 pairs
    assert all(math.isnan(v) for v in pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])[:2])  # constant side


def test_delta_pa_and_its_correlation_with_delta_acc():
    c = compare_tables(
        [[50.0, 50.0, 50.0, 50.0]],
        [[48.0, 51.0, 53.0, 55.0]],
        pa_baseline=[[60.0, 60.0, 60.0, 60.0]],
        pa_run=[[57.0, 61.0, 62.0, 68.0]],
    )
    assert c.delta_pa == [-3.0, 1.0, 2.0, 8.0]
    r, _p, n = c.pearson
    assert n == 4
    assert r == pytest.approx(np.corrcoef(c.delta_pa, c.delta_acc)[0, 1])
    scalars = c.scalars()
    assert scalars["pearson_r"] == r
    assert scalars["undistillable_count"] == 1.0
    no_pa = compare_tables([[50.0, 50.0, 50.0]], [[40.0, 60.0, 70.0]])
    assert all(math.isnan(v) for v in no_pa.delta_pa)
    assert math.isnan(no_pa.pearson[0])
    assert "Pearson r(ΔPA, ΔACC): n/a" in no_pa.report()


def test_report_and_figures():
    c = compare_tables(
        [[50.0, 50.0, 50.0]],
        [[40.0, 55.0, 70.0]],
        pa_baseline=[[60.0, 60.0, 60.0]],
        pa_run=[[50.0, 65.0, 80.0]],
        names=["cat", "dog", "emu"],
    )
    text = c.report()
    assert "undistillable classes (ΔACC < −0, marked *): 1 of 3: 0 (cat)" in text
    assert "mean ΔACC: +5.00 points" in text
    assert "Pearson r(ΔPA, ΔACC) = 1.000" in text
    figures = c.figures()
    assert set(figures) == {"delta_acc", "delta_pa_vs_delta_acc"}
    ax = figures["delta_acc"].axes[0]
    assert [round(b.get_height(), 6) for b in ax.patches] == [20.0, 5.0, -10.0]  # sorted, most helped first
    assert [t.get_text() for t in ax.get_xticklabels()] == ["emu", "dog", "cat"]
    assert "1 of 3 classes undistillable" in ax.get_title()
    assert "r = 1.00" in figures["delta_pa_vs_delta_acc"].axes[0].get_title()
    assert set(compare_tables([[1.0, 2.0, 3.0]], [[1.0, 2.0, 2.0]]).figures()) == {"delta_acc"}  # no PA: no scatter


def test_save_figures_to_a_prefix_or_a_folder(tmp_path):
    c = compare_tables([[50.0, 50.0, 50.0]], [[40.0, 55.0, 70.0]])
    assert save_figures(c, str(tmp_path / "fashion_")) == [tmp_path / "fashion_delta_acc.png"]
    assert save_figures(c, f"{tmp_path}/sub/") == [tmp_path / "sub" / "delta_acc.png"]
    assert (tmp_path / "sub" / "delta_acc.png").read_bytes()[:4] == b"\x89PNG"


# real runs -----------------------------------------------------------------------------------------

EXPERIMENT = "tests-compare"


def base_config(mlflow_uri: str, seed: int, width: int, epochs: int = 2) -> dict:
    return {
        "seed": seed,
        "epochs": epochs,
        "data": {"name": "digits", "batch_size": 64},
        "student": {"name": "cnn", "options": {"width": width}},
        "metrics": ["per_class_accuracy"],
        "schedule": {"name": "cosine"},
        "train": {"progress": False},
        "tracking": {"uri": mlflow_uri, "experiment": EXPERIMENT, "log_model": False},
    }


def test_a_teacher_without_methods_is_evaluation_only(tmp_path):
    """A vanilla baseline with the teacher attached trains exactly as one without it (the teacher only evaluates)."""
    teacher = tmp_path / "teacher.pt"
    torch.save(run(base_config("sqlite:///unused.db", 1, 8, epochs=1), track=False).student.state_dict(), teacher)
    plain = run(base_config("sqlite:///unused.db", 0, 4), track=False)
    config = base_config("sqlite:///unused.db", 0, 4)
    config.update(
        teacher={"name": "cnn", "options": {"width": 8}, "weights": str(teacher)},
        metrics=["per_class_accuracy", "agreement"],
    )
    attached = run(config, track=False)
    a, b = plain.student.state_dict(), attached.student.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert 0 <= attached.metrics["test/agreement/pa"] <= 100  # percent, as the accuracies


def fake_run(uri: str, name: str, acc: list[float], pa: list[float] | None = None) -> str:
    """An MLflow run holding only the tables a comparison reads (no training): per-class accuracy in %,
    and the agreement with the teacher in % when ``pa`` is given (a teacher was attached)."""
    tracker = Tracker(uri, EXPERIMENT)
    run_id = tracker.start(name, {"teacher": "cnn" if pa is not None else "none"})
    tracker.params({"seed": name.rsplit("-s", 1)[1]})  # as a real run logs it: comparisons pair seeds by it
    classes = list(range(len(acc)))
    common = {"class": classes, "name": [f"c{c}" for c in classes], "count": [45] * len(classes)}
    tracker.table(PER_CLASS_ACCURACY.key("test"), {**common, "student": acc})
    if pa is not None:
        tracker.params({"teacher.weights": "runs:/teacher/checkpoints/final.pt"})
        tracker.table(AGREEMENT.key("test"), {**common, "pa_by_label": pa, "pa_by_teacher": pa})
    tracker.finish("FINISHED")
    return run_id


@pytest.fixture(scope="module")
def runs(mlflow_uri: str) -> dict[str, list[str]]:
    """A teacher; vanilla students with the teacher attached for evaluation; KD students; two seeds each.

    Built directly as MLflow runs with known tables (random values, fixed seed); the studies below run
    the whole path end to end once."""
    rng = np.random.default_rng(0)
    out: dict[str, list[str]] = {"teacher": [fake_run(mlflow_uri, "teacher-s1", list(90 + 10 * rng.random(10)))]}
    for group in ("vanilla", "kd"):
        out[group] = [
            fake_run(mlflow_uri, f"{group}-s{seed}", list(70 + 20 * rng.random(10)), list(60 + 30 * rng.random(10)))
            for seed in (0, 1)
        ]
    return out


def logged_table(client: mlflow.MlflowClient, run_id: str, name: str, tmp_path: Path) -> dict[str, list]:
    """A logged table read straight from the artifact JSON (not through kdhub), NaN for null."""
    path = client.download_artifacts(run_id, f"tables/{name}.json", str(tmp_path))
    payload = json.loads(Path(path).read_text())
    return {c: [NAN if row[i] is None else row[i] for row in payload["data"]] for i, c in enumerate(payload["columns"])}


def test_cli_compare_logs_a_run_whose_values_rederive_from_the_runs(runs, mlflow_uri, capsys, tmp_path):
    vanilla, kd = runs["vanilla"], runs["kd"]
    argv = ["compare", "--baseline", ",".join(vanilla), *kd, "--tracking-uri", mlflow_uri, "--figures", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "undistillable classes" in out
    assert "mean ΔACC" in out
    assert "Pearson r(ΔPA, ΔACC) =" in out
    assert (tmp_path / "delta_acc.png").stat().st_size > 0
    assert (tmp_path / "delta_pa_vs_delta_acc.png").exists()

    client = mlflow.MlflowClient(mlflow_uri)
    compare_id = out.rsplit("logged as MLflow run ", 1)[1].split()[0]
    logged = client.get_run(compare_id)
    assert logged.data.tags["kdhub.compare"] == "true"
    assert logged.data.tags["kdhub.baseline"] == ",".join(vanilla)
    assert logged.data.tags["kdhub.runs"] == ",".join(kd)
    assert logged.info.run_name == "compare-kd-vs-vanilla"
    assert client.get_experiment(logged.info.experiment_id).name == f"{EXPERIMENT}-compare"  # beside the runs
    assert logged.data.tags["kdhub.kind"] == "compare"
    figures = {a.path for a in client.list_artifacts(compare_id, "figures/compare")}
    assert figures == {"figures/compare/delta_acc.png", "figures/compare/delta_pa_vs_delta_acc.png"}

    # re-derive everything from the runs' own tables with numpy
    def side(ids: list[str], table: str, column: str, scale: float) -> np.ndarray:
        values = [logged_table(client, i, f"test/{table}", tmp_path / i)[column] for i in ids]
        return scale * np.nanmean(np.array(values, dtype=float), axis=0)

    acc_v, acc_k = side(vanilla, "per_class_accuracy", "student", 1), side(kd, "per_class_accuracy", "student", 1)
    pa_v, pa_k = side(vanilla, "agreement", "pa_by_label", 1), side(kd, "agreement", "pa_by_label", 1)
    table = logged_table(client, compare_id, "compare/per_class", tmp_path / "cmp")
    assert table["class"] == list(range(10))
    np.testing.assert_allclose(table["acc_baseline"], acc_v)
    np.testing.assert_allclose(table["delta_acc"], acc_k - acc_v)
    np.testing.assert_allclose(table["delta_pa"], pa_k - pa_v)
    assert table["undistillable"] == [bool(d < 0) for d in acc_k - acc_v]
    metrics = logged.data.metrics
    assert metrics["undistillable_count"] == sum(d < 0 for d in acc_k - acc_v)
    assert metrics["mean_delta_acc"] == pytest.approx(float(np.mean(acc_k - acc_v)))
    r, p = stats.pearsonr(pa_k - pa_v, acc_k - acc_v)
    assert metrics["pearson_r"] == pytest.approx(r)
    assert metrics["pearson_p"] == pytest.approx(p)
    assert metrics["pearson_r"] == pytest.approx(np.corrcoef(pa_k - pa_v, acc_k - acc_v)[0, 1])


def test_compare_runs_without_logging_and_baseline_without_agreement(runs, mlflow_uri):
    # the teacher run as baseline: it has no agreement table, so ΔPA is NaN and a note says why
    c = compare_runs(runs["teacher"], runs["kd"][0], uri=mlflow_uri, log=False)
    assert isinstance(c, Comparison)
    assert c.run_id is None
    assert all(math.isnan(v) for v in c.delta_pa)
    assert math.isnan(c.pearson[0])
    assert any("methods: []" in note for note in c.notes)


def test_cli_errors_are_one_line_and_exit_2(runs, mlflow_uri, capsys):
    assert main(["compare", "-b", "0" * 32, runs["kd"][0], "--tracking-uri", mlflow_uri, "--no-log"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kdhub: error: baseline run '000")
    assert "not found" in err
    assert "\n" not in err
    argv = ["compare", "-b", runs["vanilla"][0], runs["kd"][0], "--split", "val", "--tracking-uri", mlflow_uri]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert f"run {runs['vanilla'][0]}" in err
    assert "has no table val/per_class_accuracy" in err
    assert "add the per_class_accuracy metric" in err
    assert "\n" not in err
    with pytest.raises(KdhubError, match="tol"):
        compare_runs(runs["vanilla"], runs["kd"], uri=mlflow_uri, tol=-1.0, log=False)


# studies --------------------------------------------------------------------------------------------


def study(**changes) -> StudyConfig:
    teacher = {"name": "cnn", "options": {"width": 8}, "weights": "runs:/${teacher}/checkpoints/final.pt"}
    data = {
        "name": "cmp",
        "experiment": "tests-compare-study",
        "base": {
            "epochs": 1,
            "data": {"name": "digits", "batch_size": 128},
            "metrics": ["per_class_accuracy", "agreement"],
            "train": {"progress": False},
            "tracking": {"log_model": False},
        },
        "runs": [
            {"name": "teacher", "set": {"student": {"name": "cnn", "options": {"width": 8}}, "metrics": ["accuracy"]}},
            {"name": "vanilla", "set": {"student": {"name": "cnn", "options": {"width": 4}}, "teacher": teacher}},
            {
                "name": "kd",
                "set": {"student": {"name": "cnn", "options": {"width": 4}}, "teacher": teacher, "methods": ["kd"]},
            },
        ],
        "compare": {"baseline": "vanilla", "runs": ["kd"]},
    }
    data.update(changes)
    return StudyConfig.model_validate(data)


def test_study_compare_section_is_checked_before_training():
    expand(study())
    for compare, message in [
        ({"baseline": "vanila", "runs": ["kd"]}, "compare.baseline: 'vanila' names no run"),
        (
            {"baseline": "vanilla", "runs": ["teacher"]},
            "no metric logging the per_class_accuracy",
        ),
        ({"baseline": "vanilla", "runs": ["kd"], "split": "val"}, "on split 'val'"),
        ({"baseline": "vanilla", "runs": ["vanilla"]}, "'vanilla' is the baseline"),
    ]:
        with pytest.raises(ConfigError, match=message):
            expand(study(compare=compare))


def test_study_logs_the_comparison_under_its_parent(mlflow_uri):
    result = run_study(study(seeds=[0, 1]), mlflow_uri)
    comparison = result["comparisons"]["kd"]
    summary = result["summary"]
    ids = dict.fromkeys(summary["run"])
    for name in ids:
        ids[name] = [r for n, r in zip(summary["run"], summary["run_id"], strict=True) if n == name]
    assert comparison.baseline_ids == ids["vanilla"]
    assert comparison.run_ids == ids["kd"]
    client = mlflow.MlflowClient(mlflow_uri)
    logged = client.get_run(comparison.run_id)
    assert logged.data.tags["mlflow.parentRunId"] == result["parent_run_id"]
    assert logged.info.run_name == "compare-kd-vs-vanilla"
    assert logged.data.metrics["undistillable_count"] == comparison.undistillable_count
    parent = client.get_run(result["parent_run_id"]).data
    assert parent.metrics["compare/kd/mean_delta_acc"] == pytest.approx(comparison.mean_delta_acc)
    # the parent reads as the study: its params, a description, no mangled names
    assert parent.params["runs"] == "teacher,vanilla,kd"
    assert parent.params["seeds"] == "0,1"
    assert parent.params["base.epochs"] == "1"
    assert parent.tags["mlflow.note.content"].startswith("Study **cmp**: **teacher**, **vanilla**, **kd**")
    assert not any("_" in key.split("/")[1] for key in parent.metrics if key.startswith("compare/"))


# seed statistics ----------------------------------------------------------------------------------------

# 5 seeds, 3 classes: class 0 falls in every seed (-2, -1.5, -2.5, -1, -2), class 1 is noise
# (+1, -1, +0.5, -1.5, 0: mean -0.2), class 2 rises (+3, +2, +4, +3, +3).
BASE5 = [[80.0, 70.0, 60.0], [81.0, 71.0, 61.0], [79.0, 69.0, 59.0], [80.5, 70.5, 60.5], [80.0, 70.0, 60.0]]
DELTA5 = [[-2.0, 1.0, 3.0], [-1.5, -1.0, 2.0], [-2.5, 0.5, 4.0], [-1.0, -1.5, 3.0], [-2.0, 0.0, 3.0]]
RUN5 = [[b + d for b, d in zip(brow, drow, strict=True)] for brow, drow in zip(BASE5, DELTA5, strict=True)]


def seeded(**kw) -> Comparison:
    return compare_tables(
        BASE5, RUN5, seeds_baseline=[0, 1, 2, 3, 4], seeds_run=[0, 1, 2, 3, 4], names=["a", "b", "c"], **kw
    )


def test_seed_statistics_paired_by_seed_number():
    c = seeded()
    assert c.test_name == "paired t-test"
    deltas = np.array(DELTA5)
    np.testing.assert_allclose(c.delta_acc, deltas.mean(axis=0))  # paper rule: averages, then difference
    tests = c.class_tests
    for m in range(3):
        reference = stats.ttest_rel(np.array(RUN5)[:, m], np.array(BASE5)[:, m])
        assert tests[m].p == pytest.approx(reference.pvalue)
        assert tests[m].sd == pytest.approx(np.std(deltas[:, m], ddof=1))
    assert c.sign_agreement == [(5, 5), (2, 5), (5, 5)]  # class 1: mean -0.2, two seeds of five below 0
    p = [t.p for t in tests]
    np.testing.assert_allclose(c.p_adjusted, stats.false_discovery_control(p, method="bh"))
    assert c.undistillable == [0, 1]  # the paper's rule on the averages: class 1 is hurt by seed noise
    assert c.undistillable_significant == [0]
    assert c.helped_significant == [2]
    assert c.seed_undistillable_counts == [1, 2, 1, 2, 1]
    # seeds listed in another order are paired by number, not by position
    shuffled = compare_tables(
        BASE5, RUN5[::-1], seeds_baseline=[0, 1, 2, 3, 4], seeds_run=[4, 3, 2, 1, 0], names=["a", "b", "c"]
    )
    assert [t.p for t in shuffled.class_tests] == pytest.approx(p)


def test_welch_when_the_seeds_differ_and_no_test_with_one_seed():
    c = compare_tables(BASE5, RUN5, seeds_baseline=[0, 1, 2, 3, 4], seeds_run=[5, 6, 7, 8, 9])
    assert c.test_name == "Welch t-test"
    reference = stats.ttest_ind(np.array(RUN5)[:, 0], np.array(BASE5)[:, 0], equal_var=False)
    assert c.class_tests[0].p == pytest.approx(reference.pvalue)
    one = compare_tables([BASE5[0]], [RUN5[0]])
    assert one.test_name == "no test"
    assert one.undistillable_significant == []
    assert "no spread and no test" in one.report()


def test_overall_accuracy_weighted_by_counts_and_its_test():
    counts = [100.0, 300.0, 100.0]
    c = seeded(counts=counts)
    base = np.array(BASE5) @ np.array(counts) / 500
    run_ = np.array(RUN5) @ np.array(counts) / 500
    np.testing.assert_allclose(c.overall(c.baseline_by_seed), base)
    reference = stats.ttest_rel(run_, base)
    assert c.overall_test.p == pytest.approx(reference.pvalue)
    scalars = c.scalars()
    assert scalars["acc_baseline_mean"] == pytest.approx(base.mean())
    assert scalars["acc_run_std"] == pytest.approx(np.std(run_, ddof=1))
    assert scalars["delta_acc_overall_p"] == pytest.approx(reference.pvalue)
    assert scalars["undistillable_significant_count"] == 1.0
    assert scalars["undistillable_count_per_seed_mean"] == pytest.approx(1.4)


def test_holm_is_stricter_than_bh_and_alpha_applies():
    bh, holm_ = seeded(), seeded(correction="holm")
    assert all(h >= b for h, b in zip(holm_.p_adjusted, bh.p_adjusted, strict=True))
    assert seeded(alpha=1e-9).undistillable_significant == []
    for bad, message in [({"alpha": 0.0}, "alpha"), ({"correction": "bonf"}, "correction")]:
        with pytest.raises(CompareError, match=message):
            seeded(**bad)
    with pytest.raises(CompareError, match="seeds_run"):
        compare_tables(BASE5, RUN5, seeds_run=[0, 1])


def test_report_and_figure_with_seed_statistics():
    c = seeded(counts=[100.0, 100.0, 100.0])
    text = c.report()
    assert "paired t-test over 5 seeds paired by seed number" in text
    assert "undistillable beyond seed noise (ΔACC < −0 and p (BH) < 0.05, marked !): 1 of 3: 0 (a)" in text
    assert "helped beyond seed noise (marked +): 1 of 3: 2 (c)" in text
    assert "undistillable count of each seed pair: 1, 2, 1, 2, 1 (mean 1.4 ± 0.5)" in text
    assert "accuracy: baseline" in text
    assert "paired t-test t(4) =" in text
    line = next(row for row in text.splitlines() if row.strip().startswith("0  a"))
    assert "5/5" in line
    assert line.endswith("*!")
    assert next(row for row in text.splitlines() if row.strip().startswith("1  b")).endswith("  *")
    ax = c.figures()["delta_acc"].axes[0]
    assert [round(b.get_height(), 6) for b in ax.patches] == [3.0, -0.2, -1.8]
    assert "1 hurt and 1 helped beyond seed noise" in ax.get_title()
    assert any("CI" in t.get_text() for t in ax.get_legend().get_texts())


def test_seed_tables_hold_every_input():
    c = seeded(counts=[100.0, 100.0, 100.0])
    c.baseline_ids, c.run_ids = [f"b{s}" for s in range(5)], [f"r{s}" for s in range(5)]
    table = c.seed_table()
    assert len(table["acc"]) == 2 * 5 * 3
    rows = [i for i in range(30) if table["side"][i] == "run" and table["seed"][i] == 2]
    assert [table["acc"][i] for i in rows] == RUN5[2]
    assert {table["run_id"][i] for i in rows} == {"r2"}
    seeds = c.seeds_summary()
    run_rows = [i for i, side in enumerate(seeds["side"]) if side == "run"]
    assert [seeds["undistillable_count"][i] for i in run_rows] == [1, 2, 1, 2, 1]
    assert seeds["delta_acc"][run_rows[0]] == pytest.approx(np.mean(DELTA5[0]))


def test_logged_tables_let_a_reviewer_recompute_the_statistics(runs, mlflow_uri, tmp_path):
    """From compare/per_seed alone (every input value), scipy gives the logged p-values, corrections, overall test."""
    c = compare_runs(runs["vanilla"], runs["kd"], uri=mlflow_uri, correction="holm")
    assert c.test_name == "paired t-test"  # both sides ran seeds 0 and 1
    client = mlflow.MlflowClient(mlflow_uri)
    inputs = logged_table(client, c.run_id, "compare/per_seed", tmp_path / "in")
    per_class = logged_table(client, c.run_id, "compare/per_class", tmp_path / "out")
    metrics = client.get_run(c.run_id).data.metrics
    assert client.get_run(c.run_id).data.params["correction"] == "holm"

    def values(side: str, m: int) -> list[float]:
        rows = sorted(
            (inputs["seed"][i], inputs["acc"][i])
            for i in range(len(inputs["acc"]))
            if inputs["side"][i] == side and inputs["class"][i] == m
        )
        return [v for _, v in rows]

    p = []
    for m in range(10):
        run_v, base_v = np.array(values("run", m)), np.array(values("baseline", m))
        diffs = run_v - base_v
        assert per_class["delta_acc"][m] == pytest.approx(run_v.mean() - base_v.mean())
        if np.ptp(diffs) == 0:  # identical differences: p is 1 (no change) or the exact sign test's
            p.append(1.0 if diffs[0] == 0 else 2 * 0.5 ** len(diffs))
        else:
            p.append(float(stats.ttest_rel(run_v, base_v).pvalue))
        assert per_class["p"][m] == pytest.approx(p[-1])
    m_tests = len(p)
    order = np.argsort(p)
    holm_p = np.maximum.accumulate([min(1.0, (m_tests - k) * p[i]) for k, i in enumerate(order)])
    expected = np.empty(m_tests)
    expected[order] = holm_p
    np.testing.assert_allclose(per_class["p_adjusted"], expected)
    significant = [bool(per_class["delta_acc"][m] < 0 and expected[m] < 0.05) for m in range(10)]
    assert per_class["undistillable_significant"] == significant
    assert metrics["undistillable_significant_count"] == sum(significant)
    counts = {inputs["class"][i]: inputs["count"][i] for i in range(len(inputs["acc"]))}
    weights = np.array([counts[m] for m in range(10)])

    def overall(side: str) -> np.ndarray:
        return np.array([values(side, m) for m in range(10)]).T @ weights / weights.sum()

    reference = stats.ttest_rel(overall("run"), overall("baseline"))
    assert metrics["delta_acc_overall"] == pytest.approx(float(np.mean(overall("run") - overall("baseline"))))
    assert metrics["delta_acc_overall_p"] == pytest.approx(reference.pvalue)
    assert metrics["acc_run_mean"] == pytest.approx(float(overall("run").mean()))


def test_agreement_tables_of_earlier_kdhub_in_fractions_are_read_as_percent():
    """Earlier kdhub versions logged agreements as fractions; a comparison with such a run stays in %."""
    from kdhub_analysis.comparison_tables import agreement_percent

    assert agreement_percent([0.5, NAN, 1.0]) == pytest.approx([50.0, NAN, 100.0], nan_ok=True)
    assert agreement_percent([50.0, 0.5, 100.0]) == [50.0, 0.5, 100.0]  # percent: unchanged
    assert math.isnan(agreement_percent([NAN])[0])
