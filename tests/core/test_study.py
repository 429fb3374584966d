"""Studies: expansion (runs x grid x seeds), references to earlier runs, nested MLflow runs."""

import mlflow
import pytest
import yaml

from kdhub.cli import main
from kdhub.errors import ConfigError
from kdhub.study import StudyConfig, expand, run_study

BASE = {
    "epochs": 1,
    "data": {"name": "digits", "batch_size": 128},
    "metrics": ["accuracy"],
    "train": {"progress": False},
    "tracking": {"log_model": False},
}


def study(**changes) -> StudyConfig:
    data = {
        "name": "s",
        "base": BASE,
        "runs": [
            {"name": "teacher", "set": {"student": {"name": "cnn", "options": {"width": 8}}}},
            {
                "name": "kd",
                "set": {
                    "student": {"name": "cnn", "options": {"width": 4}},
                    "teacher": {
                        "name": "cnn",
                        "options": {"width": 8},
                        "weights": "runs:/${teacher}/checkpoints/final.pt",
                    },
                    "methods": ["kd"],
                },
                "grid": {"methods.0.options.temperature": [1, 4]},
            },
        ],
        "seeds": [0, 1],
    }
    data.update(changes)
    return StudyConfig.model_validate(data)


def test_expansion_order_grid_and_seeds():
    plan = expand(study())
    assert [(n, label, seed) for n, label, seed, _ in plan] == [
        ("teacher", "", 0),
        ("kd", "temperature=1", 0),
        ("kd", "temperature=4", 0),
        ("teacher", "", 1),
        ("kd", "temperature=1", 1),
        ("kd", "temperature=4", 1),
    ]
    assert plan[2][3]["methods"][0]["options"]["temperature"] == 4
    assert plan[2][3]["seed"] == 0


def test_reference_to_a_later_or_unknown_run_is_an_error():
    runs = study().model_dump()["runs"][::-1]
    with pytest.raises(ConfigError, match=r"\$\{teacher\} names no earlier run"):
        expand(study(runs=runs))


def test_a_bad_run_config_names_the_run():
    runs = study().model_dump()["runs"]
    runs[1]["set"]["methods"] = ["kdd"]
    with pytest.raises(ConfigError, match=r"runs.kd\[temperature=1\]: methods.0.name: unknown method 'kdd'"):
        expand(study(runs=runs))


def test_study_runs_nest_under_a_parent_and_chain_teachers(mlflow_uri):
    result = run_study(study(seeds=[0]), mlflow_uri)
    client = mlflow.MlflowClient(mlflow_uri)
    children = client.search_runs(
        [client.get_run(result["parent_run_id"]).info.experiment_id],
        f"tags.mlflow.parentRunId = '{result['parent_run_id']}'",
    )
    assert len(children) == 3
    teacher_id = result["run_ids"][0]["teacher"]
    kd = [c for c in children if c.data.tags["method"] == "kd"]
    assert all(c.data.params["teacher.weights"] == f"runs:/{teacher_id}/checkpoints/final.pt" for c in kd)
    assert result["summary"]["run"] == ["teacher", "kd", "kd"]


def test_cli_dry_run(tmp_path, capsys):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study(seeds=[3]).model_dump(mode="json")))
    assert main(["study", str(path), "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "teacher  seed 3",
        "kd[temperature=1]  seed 3",
        "kd[temperature=4]  seed 3",
    ]
