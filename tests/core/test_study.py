"""Study files: expansion (runs x grid x seeds), references between runs, checks before anything trains."""

import math

import pytest
import yaml

from kdhub.commands.cli import main
from kdhub.contract.errors import ConfigError
from kdhub.study import StudyConfig, count_runs, expand, parse_study
from kdhub.study.aggregate import aggregate, mean_std
from kdhub.study.plan import compare_groups

BASE = {
    "epochs": 1,
    "data": {"name": "digits", "batch_size": 128},
    "metrics": ["accuracy"],
    "train": {"progress": False},
    "tracking": {"log_model": False},
}
TEACHER = {"name": "cnn", "options": {"width": 8}, "weights": "runs:/${teacher}/checkpoints/final.pt"}


def study(**changes) -> StudyConfig:
    data = {
        "name": "s",
        "base": BASE,
        "runs": [
            {"name": "teacher", "set": {"student": {"name": "cnn", "options": {"width": 8}}}},
            {
                "name": "kd",
                "set": {"student": {"name": "cnn", "options": {"width": 4}}, "teacher": TEACHER, "methods": ["kd"]},
                "grid": {"methods.0.options.temperature": [1, 4]},
            },
        ],
        "seeds": [0, 1],
    }
    data.update(changes)
    return StudyConfig.model_validate(data)


def test_expansion_order_grid_seeds_and_dependencies():
    plan = expand(study())
    assert [(r.name, r.label, r.seed) for r in plan] == [
        ("teacher", "", 0),
        ("kd", "temperature=1", 0),
        ("kd", "temperature=4", 0),
        ("teacher", "", 1),
        ("kd", "temperature=1", 1),
        ("kd", "temperature=4", 1),
    ]
    assert plan[2].config["methods"][0]["options"]["temperature"] == 4
    assert plan[2].config["seed"] == 0
    assert [r.key for r in plan[:2]] == ["teacher-s0", "kd[temperature=1]-s0"]
    # each seed's KD runs are taught by the teacher of the same seed
    assert plan[1].deps == {"teacher": "teacher-s0"}
    assert plan[4].deps == {"teacher": "teacher-s1"}
    assert plan[0].deps == {}
    assert count_runs(study()) == 6


def test_a_shared_teacher_runs_once_and_serves_every_seed():
    runs = study().model_dump()["runs"]
    runs[0]["shared"] = True
    plan = expand(study(runs=runs, seeds=[3, 4, 5]))
    teachers = [r for r in plan if r.name == "teacher"]
    assert [(r.seed, r.key) for r in teachers] == [(3, "teacher-s3")]
    assert {r.deps["teacher"] for r in plan if r.name == "kd"} == {"teacher-s3"}
    assert sorted({r.seed for r in plan if r.name == "kd"}) == [3, 4, 5]
    # the same with an explicit single seed per run
    runs[0]["shared"], runs[0]["seeds"] = False, [7]
    plan = expand(study(runs=runs, seeds=[3, 4]))
    assert [r.key for r in plan if r.name == "teacher"] == ["teacher-s7"]
    assert {r.deps["teacher"] for r in plan if r.name == "kd"} == {"teacher-s7"}


def test_a_reference_to_a_run_without_that_seed_is_an_error():
    runs = study().model_dump()["runs"]
    runs[0]["seeds"] = [0, 1]
    with pytest.raises(ConfigError, match=r"runs.kd seed 2: \$\{teacher\} does not run with seed 2"):
        expand(study(runs=runs, seeds=[0, 1, 2]))


def test_references_to_grid_points():
    runs = study().model_dump()["runs"]
    runs[0]["grid"] = {"student.options.width": [8, 16]}
    with pytest.raises(ConfigError, match=r"'teacher' has 2 grid points; name one, e.g. \$\{teacher\[width=8\]\}"):
        expand(study(runs=runs))
    runs[1]["set"]["teacher"] = {**TEACHER, "options": {"width": 16}, "weights": "runs:/${teacher[width=16]}/x.pt"}
    plan = expand(study(runs=runs))
    assert {r.deps["teacher[width=16]"] for r in plan if r.name == "kd" and r.seed == 1} == {"teacher[width=16]-s1"}
    runs[1]["set"]["teacher"]["weights"] = "runs:/${teacher[width=32]}/x.pt"
    with pytest.raises(ConfigError, match=r"'teacher' has no grid point 'width=32'"):
        expand(study(runs=runs))


def test_reference_to_a_later_or_unknown_run_is_an_error():
    runs = study().model_dump()["runs"][::-1]
    with pytest.raises(ConfigError, match=r"\$\{teacher\} names no earlier run"):
        expand(study(runs=runs))


@pytest.mark.parametrize("weights", ["runs:/${teacher/checkpoints/final.pt", "runs:/${}/final.pt", "${te acher}"])
def test_a_malformed_reference_is_refused(weights):
    runs = study().model_dump()["runs"]
    runs[1]["set"]["teacher"] = {**TEACHER, "weights": weights}
    with pytest.raises(ConfigError, match=r"runs.kd.teacher.weights: malformed reference"):
        expand(study(runs=runs))


def test_a_bad_run_config_names_the_run():
    runs = study().model_dump()["runs"]
    runs[1]["set"]["methods"] = ["kdd"]
    with pytest.raises(ConfigError, match=r"runs.kd\[temperature=1\]: methods.0.name: unknown method 'kdd'"):
        expand(study(runs=runs))


@pytest.mark.parametrize(
    ("second", "message"),
    [
        ({"metrics": ["accuracy", "agreement"]}, r"runs.bad: teacher: required by metric 'agreement' at metrics.1"),
        ({"teacher": {"name": "cnn"}, "methods": ["kd"], "policy": "tllm"}, r"runs.bad: .*validation"),
    ],
)
def test_a_later_invalid_run_is_refused_before_the_first_trains(second, message):
    runs = [
        {"name": "good", "set": {"student": {"name": "cnn", "options": {"width": 4}}}},
        {"name": "bad", "set": {"student": {"name": "cnn", "options": {"width": 4}}, **second}},
    ]
    with pytest.raises(ConfigError, match=message):
        expand(study(runs=runs, seeds=[0]))


def test_duplicate_seeds_names_and_grid_values_are_refused():
    for changes, message in [
        ({"seeds": [0, 0]}, "seed 0 is listed twice"),
        ({"seeds": [0, -1]}, "seeds must be >= 0"),
        ({"runs": [{"name": "a", "set": {}}, {"name": "a", "set": {}}]}, "run name 'a' is used twice"),
        ({"runs": [{"name": "a", "grid": {"optim.lr": [0.1, 0.1]}}]}, "value 0.1 is listed twice"),
        ({"runs": [{"name": "a", "grid": {"optim.lr": []}}]}, "needs at least one value"),
        ({"runs": [{"name": "a", "seeds": [1, 1]}]}, "seed 1 is listed twice"),
        ({"runs": [{"name": "a", "seeds": [1], "shared": True}]}, "either shared: true or seeds"),
    ]:
        data = {"name": "s", "base": BASE, "runs": [{"name": "a"}], **changes}
        with pytest.raises(ConfigError, match=message):
            parse_study(data)


def test_a_huge_grid_is_refused_before_it_expands():
    grid = {"optim.lr": [i / 1000 for i in range(1, 91)], "optim.momentum": [i / 100 for i in range(90)]}
    data = {"name": "s", "base": BASE, "runs": [{"name": "a", "grid": grid}], "seeds": list(range(100))}
    huge = parse_study(data)
    assert count_runs(huge) == 810_000
    with pytest.raises(ConfigError, match=r"expands to 810,000 runs .* more than max_runs 10,000"):
        expand(huge)


def test_comparisons_per_grid_point_pair_each_width_with_its_own_baseline():
    kd = "kd"
    widths = {"student.options.width": [4, 8]}
    data = {
        "name": "s",
        "base": {**BASE, "metrics": ["per_class_accuracy"]},
        "runs": [
            {"name": "teacher", "set": {"student": {"name": "cnn", "options": {"width": 16}}}, "shared": True},
            {"name": "vanilla", "set": {"student": {"name": "cnn"}}, "grid": widths},
            {
                "name": "kd",
                "set": {"student": {"name": "cnn"}, "teacher": {**TEACHER, "options": {"width": 16}}, "methods": [kd]},
                "grid": {**widths, "methods.0.options.temperature": [2, 4]},
            },
        ],
        "seeds": [0, 1],
        "compare": {"baseline": "vanilla", "runs": ["kd"], "match": ["student.options.width"]},
    }
    spec = parse_study(data)
    groups = compare_groups(spec.compare, expand(spec))
    assert [(label, sorted(r.key for r in base)) for label, base, _ in groups] == [
        ("kd[width=4,temperature=2]", ["vanilla[width=4]-s0", "vanilla[width=4]-s1"]),
        ("kd[width=4,temperature=4]", ["vanilla[width=4]-s0", "vanilla[width=4]-s1"]),
        ("kd[width=8,temperature=2]", ["vanilla[width=8]-s0", "vanilla[width=8]-s1"]),
        ("kd[width=8,temperature=4]", ["vanilla[width=8]-s0", "vanilla[width=8]-s1"]),
    ]
    assert all(len(runs) == 2 for _, _, runs in groups)  # two seeds each
    data["compare"] = {"baseline": "vanilla", "runs": ["kd"]}
    with pytest.raises(ConfigError, match=r"has 2 grid points; name the config paths .* compare.match"):
        expand(parse_study(data))
    data["compare"] = {"baseline": "vanilla", "runs": ["kd"], "match": ["optim.lr"]}
    with pytest.raises(ConfigError, match=r"matches 2 grid points of 'vanilla'"):
        expand(parse_study(data))


def test_search_section_is_checked_before_anything_runs():
    def search(**changes):
        spec = {"run": "kd", "space": {"methods.0.options.temperature": {"type": "float", "low": 1, "high": 8}}}
        runs = study().model_dump()["runs"]
        runs[1]["grid"] = {}
        base = {**BASE, "data": {**BASE["data"], "val_fraction": 0.1}}
        return expand(parse_study({"name": "s", "base": base, "runs": runs, "search": {**spec, **changes}}))

    plan = search()
    assert [r.key for r in plan] == ["teacher-s0"]  # the searched run is a template, not a run
    for changes, message in [
        ({"objective": "test/acc"}, "test split is never an objective"),
        ({"objective": "holdout/acc"}, r"holdout/acc needs the 'holdout' split .* data.holdout_fraction > 0"),
        ({"run": "kdd"}, "search.run: 'kdd' names no run"),
        ({"space": {"methods.0.options.temprature": {"type": "float", "low": 1, "high": 2}}}, "temprature"),
        ({"space": {"methods.0.options.temperature": {"type": "float", "low": -1, "high": 2}}}, "-1"),
        ({"space": {"optim.lr": {"type": "float", "low": 0, "high": 1, "log": True}}}, "log scale needs low > 0"),
        ({"space": {"optim.lr": {"type": "float", "low": 2, "high": 1}}}, "need finite low < high"),
        ({"sampler": "grid"}, "the grid sampler needs a step"),
        ({"space": {"optim.name": {"type": "choice", "choices": ["sgd", "adam"]}}}, "'adam' gives an invalid run"),
    ]:
        with pytest.raises(ConfigError, match=message):
            search(**changes)


def test_search_objective_on_validation_needs_a_validation_split():
    runs = study().model_dump()["runs"]
    runs[1]["grid"] = {}
    space = {"optim.lr": {"type": "float", "low": 0.01, "high": 0.1}}
    data = {"name": "s", "base": BASE, "runs": runs, "search": {"run": "kd", "space": space}}
    with pytest.raises(ConfigError, match=r"search.objective: val/acc needs the 'val' split .* data.val_fraction > 0"):
        expand(parse_study(data))


def test_mean_std_and_aggregate_over_seeds():
    mean, std, n = mean_std([90.0, 92.0, 97.0, math.nan])
    assert (mean, n) == (93.0, 3)
    assert std == pytest.approx(math.sqrt((9 + 1 + 16) / 2))  # sample standard deviation
    assert math.isnan(mean_std([1.0])[1])
    assert mean_std([]) == (pytest.approx(math.nan, nan_ok=True), pytest.approx(math.nan, nan_ok=True), 0)
    rows = [
        {
            "point": "kd[T=4]",
            "seed": 0,
            "state": "finished",
            "metrics": {"test/acc_max_seen": 90.0, "test/acc_last": 89.0},
        },
        {
            "point": "kd[T=4]",
            "seed": 1,
            "state": "finished",
            "metrics": {"test/acc_max_seen": 94.0, "test/acc_last": 93.0},
        },
        {"point": "kd[T=4]", "seed": 2, "state": "failed", "metrics": {}},
        {
            "point": "vanilla",
            "seed": 0,
            "state": "finished",
            "metrics": {"test/acc_max_seen": 80.0, "test/acc_last": 80.0},
        },
    ]
    table = aggregate(rows)
    assert table["point"] == ["kd[T=4]", "vanilla"]
    assert table["seeds"] == ["0,1", "0"]
    assert table["best_mean"] == [92.0, 80.0]
    assert table["best_std"][0] == pytest.approx(math.sqrt(8))
    assert table["last_n"] == [2, 1]
    assert table["at_best_val_n"] == [0, 0]


def test_cli_dry_run(tmp_path, capsys):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study(seeds=[3]).model_dump(mode="json")))
    assert main(["study", str(path), "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "teacher  seed 3",
        "kd[temperature=1]  seed 3  after teacher s3",
        "kd[temperature=4]  seed 3  after teacher s3",
    ]


BAD_STUDIES = {
    "not-a-mapping": "- a\n- b\n",
    "yaml-syntax": "name: s\nruns: [\n",
    "unknown-key": "name: s\nrunz: []\n",
    "duplicate-seeds": "name: s\nseeds: [0, 0]\nruns: [{name: a, set: {student: cnn}}]\n",
    "unclosed-reference": (
        "name: s\nruns:\n - {name: teacher, set: {student: cnn}}\n"
        " - {name: kd, set: {student: cnn, methods: [kd], teacher: {name: cnn, weights: 'runs:/${teacher/f.pt'}}}\n"
    ),
    "huge-grid": (
        "name: s\nseeds: [" + ",".join(map(str, range(100))) + "]\nruns:\n - name: a\n   set: {student: cnn}\n"
        "   grid: {optim.lr: ["
        + ",".join(str(i / 1000) for i in range(1, 91))
        + "], optim.momentum: ["
        + ",".join(str(i / 100) for i in range(90))
        + "]}\n"
    ),
    "bad-run-config": "name: s\nruns: [{name: a, set: {student: cnn, epochs: -1}}]\n",
    "test-objective": (
        "name: s\nruns: [{name: a, set: {student: cnn}}]\n"
        "search: {run: a, objective: test/acc, space: {optim.lr: {type: float, low: 0.01, high: 0.1}}}\n"
    ),
    "unknown-param-type": (
        "name: s\nruns: [{name: a, set: {student: cnn}}]\n"
        "search: {run: a, space: {optim.lr: {type: uniform, low: 0.01, high: 0.1}}}\n"
    ),
    "deep-nesting": "name: s\nbase: " + "[" * 5000 + "]" * 5000 + "\nruns: [{name: a}]\n",
    "negative-resources": "name: s\nresources: {cpus: -1}\nruns: [{name: a, set: {student: cnn}}]\n",
    "bad-override-path": "name: s\nruns: [{name: a, set: {student: cnn}, grid: {student.0.x: [1]}}]\n",
}


@pytest.mark.parametrize("name", sorted(BAD_STUDIES))
def test_a_bad_study_file_is_one_line_and_exit_2(name, tmp_path, capsys):
    path = tmp_path / f"{name}.yaml"
    path.write_text(BAD_STUDIES[name])
    assert main(["study", str(path), "--dry-run"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("kdhub: error: ")
    assert "\n" not in err
    assert "Traceback" not in captured.err + captured.out


def test_binary_files_and_bad_executor_options_are_one_line(tmp_path, capsys):
    binary = tmp_path / "study.yaml"
    binary.write_bytes(b"name: s\n\x81\x82\x00\xc3")
    assert main(["study", str(binary), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "UTF-8" in err
    assert "\n" not in err.strip()
    assert main(["study", str(tmp_path / "missing.yaml")]) == 2
    assert "no such study file" in capsys.readouterr().err
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(study(seeds=[0]).model_dump(mode="json")))
    uri = f"sqlite:///{tmp_path / 'never.db'}"
    for argv, message in [
        (["--parallel", "2"], "the local executor runs one run at a time"),
        (["--address", "auto"], "only the ray executor joins a cluster"),
        (["--executor", "ray", "--parallel", "0"], "--parallel: must be >= 1"),
    ]:
        assert main(["study", str(good), "--tracking-uri", uri, *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err
        assert "\n" not in err


def test_kdhub_imports_without_ray_and_optuna(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys; import kdhub, kdhub.cli, kdhub.study; kdhub.study.expand; "
        "assert 'ray' not in sys.modules and 'optuna' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)


def test_a_missing_ray_or_optuna_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    monkeypatch.setitem(sys.modules, "optuna", None)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study(seeds=[0]).model_dump(mode="json")))
    uri = f"sqlite:///{tmp_path / 'never.db'}"
    assert main(["study", str(path), "--executor", "ray", "--tracking-uri", uri]) == 2
    assert capsys.readouterr().err.strip() == (
        "kdhub: error: --executor ray needs Ray, which is not installed: pip install 'kdhub[ray]'"
    )
    runs = study().model_dump()["runs"]
    runs[1]["grid"] = {}
    data = {
        "name": "s",
        "base": {**BASE, "data": {**BASE["data"], "val_fraction": 0.1}},
        "runs": runs,
        "search": {"run": "kd", "space": {"optim.lr": {"type": "float", "low": 0.01, "high": 0.1}}},
    }
    path.write_text(yaml.safe_dump(data))
    assert main(["study", str(path), "--tracking-uri", uri]) == 2
    assert "needs Optuna, which is not installed: pip install 'kdhub[search]'" in capsys.readouterr().err
    assert not (tmp_path / "never.db").exists()  # refused before the store was touched


def test_sqlite_writes_retry_while_another_process_holds_the_lock(monkeypatch):
    from kdhub import tracking

    class Store:
        calls = 0

        def log_batch(self, run_id, metrics=()):
            Store.calls += 1
            if Store.calls < 3:
                raise RuntimeError("(sqlite3.OperationalError) database is locked")
            return run_id

        def get_run(self, run_id):
            raise RuntimeError(f"Run '{run_id}' not found")

    monkeypatch.setattr("time.sleep", lambda seconds: None)
    client = tracking.store._RetryWhenLocked(Store())
    assert client.log_batch("r1") == "r1"
    assert Store.calls == 3
    with pytest.raises(RuntimeError, match="not found"):  # other errors are not retried
        client.get_run("r2")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"resources": {"cpus": True}}, r"resources.cpus: expected a number, got a boolean \(true\)"),
        ({"resources": {"gpus": float("nan")}}, r"resources.gpus: .*finite"),
        ({"compare": {"baseline": "a", "runs": ["a"], "tol": float("inf")}}, r"compare.tol: .*finite"),
        ({"resources": {"cpu": 2}}, r"resources.cpu: .*did you mean 'cpus'"),
    ],
)
def test_study_files_are_as_strict_as_run_configs(changes, message):
    """The study file's models share the run config's strict base: no boolean for a number, no NaN, no unknown key."""
    data = {"name": "s", "base": BASE, "runs": [{"name": "a"}], **changes}
    with pytest.raises(ConfigError, match=message):
        parse_study(data)
