"""Bad configs give one readable line naming the YAML path (and the plugin), exit code 2."""

from pathlib import Path

import pytest
import yaml

from kdhub.cli import main
from kdhub.config import apply_overrides, load_config


@pytest.fixture
def write(tmp_path):
    def _write(data: dict) -> str:
        path = tmp_path / "run.yaml"
        path.write_text(yaml.safe_dump(data))
        return str(path)

    return _write


BASE = {
    "student": "cnn",
    "teacher": {"name": "cnn", "weights": "teacher.pt"},
    "methods": [{"name": "kd", "options": {"temperature": 4}}],
}


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"methods": [{"name": "kdd"}]}, "methods.0.name: unknown method 'kdd'; did you mean 'kd'"),
        (
            {"methods": [{"name": "kd", "options": {"temperature": -1}}]},
            "methods.0.options.temperature: Input should be greater than 0 (method 'kd')",
        ),
        (
            {"methods": [{"name": "kd", "options": {"temprature": 2}}]},
            "methods.0.options.temprature: unknown key; did you mean 'temperature'? (method 'kd')",
        ),
        ({"optim": {"lrr": 0.1}}, "optim.lrr: unknown key; did you mean 'lr'?"),
        ({"epochs": 0}, "epochs: Input should be greater than or equal to 1"),
        ({"student": "resnet8x5"}, "student.name: unknown model 'resnet8x5'; did you mean"),
        ({"policy": {"name": "tlm"}}, "policy.name: unknown policy 'tlm'; did you mean 'tllm'"),
        ({"teacher": None}, "teacher: required by method 'kd'"),
        (
            {"metrics": [{"name": "accuracy", "split": "dev"}]},
            "metrics.0.split: Input should be 'train', 'val' or 'test'",
        ),
    ],
)
def test_bad_config_exits_2_with_one_line(capsys, write, change, expected):
    code, err = run_cli(capsys, "run", write({**BASE, **change}))
    assert code == 2
    assert expected in err
    assert "Traceback" not in err
    assert err.startswith("kdhub: error: ")


def test_missing_file_and_bad_yaml(capsys, tmp_path):
    code, err = run_cli(capsys, "run", str(tmp_path / "nope.yaml"))
    assert code == 2
    assert "no such config file" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("student: [unclosed\n")
    code, err = run_cli(capsys, "run", str(bad))
    assert code == 2
    assert "invalid YAML" in err


def test_bad_override(capsys, write):
    code, err = run_cli(capsys, "run", write(BASE), "--set", "methods.3.weight=1")
    assert code == 2
    assert "--set methods.3.weight" in err
    code, err = run_cli(capsys, "run", write(BASE), "--set", "nonsense")
    assert code == 2
    assert "expected dotted.path=value" in err


def test_overrides_set_nested_values_and_expand_shorthands(write):
    data = apply_overrides(
        {"methods": ["kd"], "optim": {"lr": 0.1}}, ["methods.0.options.temperature=2", "optim.lr=0.2", "seed=3"]
    )
    assert data == {"methods": [{"name": "kd", "options": {"temperature": 2}}], "optim": {"lr": 0.2}, "seed": 3}
    config = load_config(write(BASE), ["data.batch_size=32", "student.options.width=4"])
    assert config.data.batch_size == 32
    assert config.student.options == {"width": 4}


def test_unknown_kind_and_name_in_show(capsys):
    code, err = run_cli(capsys, "show", "method", "dkdd")
    assert code == 2
    assert "did you mean 'dkd'" in err
    code, err = run_cli(capsys, "list", "metrik")
    assert code == 2
    assert "did you mean 'metric'" in err


EXAMPLES_DIR = Path(__file__).parents[2] / "examples"
STUDY_DIRS = ("studies", "reproductions")
# written for features being added (data.holdout_fraction, shared runs, search:); it validates once they are merged
NEEDS_UNMERGED_FEATURES = {"fashion_tllm_eta_search.yaml"}
EXAMPLES = sorted(
    p for p in EXAMPLES_DIR.rglob("*.yaml") if "plugin-template" not in str(p) and p.parent.name not in STUDY_DIRS
)
STUDIES = sorted(
    p for d in STUDY_DIRS for p in (EXAMPLES_DIR / d).glob("*.yaml") if p.name not in NEEDS_UNMERGED_FEATURES
)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_config_validates(path):
    from kdhub.config import resolve_plugins
    from kdhub.plugins import get_registry

    resolve_plugins(load_config(path), get_registry())


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_every_example_study_expands(path):
    from kdhub.study import expand, load_study

    assert expand(load_study(path))
