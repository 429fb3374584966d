"""Bad configs give one readable line naming the YAML path (and the plugin), exit code 2."""

from pathlib import Path

import pytest
import yaml

from kdhub.commands.cli import main
from kdhub.contract.config_loading import apply_overrides, load_config
from kdhub.contract.errors import KdhubError


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
            "methods.0.options.temperature: Input should be greater than or equal to 0.01, got -1 (method 'kd')",
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
            "metrics.0.split: Input should be 'train', 'val', 'holdout' or 'test'",
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
    from kdhub.registry.loading import get_registry
    from kdhub.registry.resolve import resolve_plugins

    resolve_plugins(load_config(path), get_registry())


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_every_example_study_expands(path):
    from kdhub.study import expand, load_study

    assert expand(load_study(path))


# Issue 14: bad input never gives a traceback, nonsense is never accepted ------------------------------

TINY = "student: {name: cnn, options: {width: 4}}\nepochs: 2\ntrain: {progress: false}\n"


@pytest.fixture
def no_training(monkeypatch):
    """Configs here must be refused before training: reaching ``run`` fails the test."""
    import kdhub.engine.runner

    def accepted(*args, **kwargs):
        raise AssertionError("the config was accepted")

    monkeypatch.setattr(kdhub.engine.runner, "run", accepted)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00binary", "not UTF-8 text (byte 0x89 at offset 0)"),
        ("student: cnn\nepochs: 1\n".encode("utf-16"), "the file is UTF-16 text; kdhub reads UTF-8"),
        ("student: cnn\ntracking: {run_name: caf\xe9}\n".encode("latin-1"), "not UTF-8 text (byte 0xe9"),
        (b"student: cnn\x00\n", "NUL bytes"),
        (b"a: &a [*a]\nstudent: cnn\n", "alias *a refers to the value it is part of"),
        (b"student: cnn\nx: " + b"[" * 20000 + b"]" * 20000 + b"\n", "nested more than 64 levels deep"),
        (b"student: cnn\nstudent: resnet8\n", "found duplicate key 'student'"),
        (b"student: !!binary aGVsbG8=\n", "the tag !!binary is not allowed"),
        (b"student: cnn\nmethods: !!set {kd}\n", "the tag !!set is not allowed"),
        (b"student: !!python/object/apply:os.system ['true']\n", "the tag !!python/object/apply:os.system"),
        (b"student: !custom cnn\n", "the tag !custom is not allowed"),
        (
            b'a: &a ["l","l","l","l","l","l","l","l","l"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n'
            b"c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nstudent: cnn\n",
            "aliases may not nest",
        ),
        (b"x: [" + b", ".join([b"*a"] * 65) + b"]\n", "found undefined alias"),
        (b"- just\n- a list\n", "a run config must be a mapping"),
    ],
)
def test_hostile_or_broken_yaml_is_one_line(capsys, tmp_path, raw, expected, no_training):
    path = tmp_path / "run.yaml"
    path.write_bytes(raw)
    code, err = run_cli(capsys, "run", str(path))
    assert code == 2
    assert expected in err
    assert err.startswith(f"kdhub: error: {path}") or err.startswith("kdhub: error: ")
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_an_alias_budget_and_plain_sharing(tmp_path):
    from kdhub.contract.config import ConfigError
    from kdhub.contract.config_loading import read_yaml

    shared = tmp_path / "shared.yaml"
    shared.write_text("opts: &o {temperature: 4}\nmethods: [{name: kd, options: *o}, {name: dkd, options: *o}]\n")
    data = read_yaml(shared)
    assert data["methods"][0]["options"] == data["methods"][1]["options"] == {"temperature": 4}
    many = tmp_path / "many.yaml"
    many.write_text("a: &a 1\nb: [" + ", ".join(["*a"] * 65) + "]\n")
    with pytest.raises(ConfigError, match="more than 64 aliases"):
        read_yaml(many)
    dates = tmp_path / "dates.yaml"
    dates.write_text("tracking: {tags: {day: 2024-01-01}}\n")
    assert read_yaml(dates)["tracking"]["tags"]["day"] == "2024-01-01"  # a string, not a datetime


def test_a_5000_character_path_is_one_line(capsys, no_training):
    code, err = run_cli(capsys, "run", "x" * 5000 + ".yaml")
    assert code == 2
    assert "(5005 characters)" in err
    assert len(err) < 400


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("epochs: true", "epochs: expected a number, got a boolean (true)"),
        ("ce_weight: .inf", "ce_weight: inf is not allowed, give a finite number"),
        ("optim: {lr: .nan}", "optim.lr: NaN is not allowed, give a finite number"),
        ("optim: {name: adamw, betas: [1.5, 0.9]}", "optim.betas.0: Input should be less than 1, got 1.5"),
        ("optim: {name: adamw, betas: [.nan, 0.9]}", "optim.betas.0: NaN is not allowed"),
        ("schedule: {milestones: [.nan]}", "schedule.milestones.0: expected an epoch count"),
        ("schedule: {milestones: [.inf]}", "got inf"),
        ("schedule: {milestones: [-3]}", "got -3"),
        ("schedule: {warmup_epochs: .inf}", "schedule.warmup_epochs: inf is not allowed"),
        ("schedule: {warmup_epochs: 2}", "schedule.warmup_epochs: 2 is not below epochs 2"),
        ("schedule: {name: cosine, min_lr: 0.5}", "schedule.min_lr: 0.5 is above optim.lr 0.05"),
        ("seed: 18446744073709551616", "seed: Input should be less than or equal to 4294967295"),
        ("metrics: [{name: accuracy, at: [-3]}]", "metrics.0.at.0: Input should be greater than or equal to 1"),
        ("metrics: [{name: accuracy, at: [9]}]", "metrics.0.at: epoch 9 is after the last epoch 2"),
        ("metrics: [{name: accuracy, every: 5}]", "metrics.0.every: 5 is more than the 2 epochs"),
        ("data: {options: {test_fraction: 0.999}}", "data.options.test_fraction: 0.999 leaves 1 training images"),
        ("teacher: {name: cnn, weights: ''}\nmethods: [kd]", "teacher.weights: String should have at least 1"),
        ("teacher: 5", "teacher: expected a plugin name or a mapping with 'name' and 'options', got 5"),
        ("policy: {name: tllm, options: {start: abc}}", "policy.options.start: expected an epoch count"),
        ("methods: [{name: kd, weight: .inf}]\nteacher: cnn", "methods.0.weight: inf is not allowed"),
        ("train: {device: ''}", "train.device: unknown device '' (use auto, cpu, cuda, cuda:N or mps)"),
        ("train: {device: gpu}", "train.device: unknown device 'gpu'"),
        ("tracking: {uri: 'not a uri'}", "tracking.uri: 'not a uri' is not a tracking URI"),
        ("tracking: {uri: 'ftp://host/x'}", "unsupported scheme 'ftp'"),
        ("tracking: {uri: 'sqlite:///'}", "in-memory database"),
        (f"tracking: {{run_name: {'x' * 100_000}}}", "tracking.run_name: String should have at most 250 characters"),
        (
            f"tracking: {{tags: {{a: {'x' * 100_000}}}}}",
            "tag 'a': the value is 100,000 characters (MLflow keeps 8,000)",
        ),
        ("tracking: {tags: {'bad key!': x}}", "tag key 'bad key!': MLflow allows only letters"),
        ("tracking: {tags: {'../up': x}}", "MLflow refuses keys that read as other paths"),
        ("student: timm:resnet1", "student.name: timm has no model 'resnet1'"),
        ("student: torchvision:resnet1", "student.name: torchvision has no classification model 'resnet1'"),
        ("student: {name: torchvision:resnet18, options: {weights: FOO}}", "resnet18 has no weights 'FOO'"),
        ("student: wrn:3_3", "student.name: WRN depth must be 6n+4"),
        ("student: cnn:x", "student.name: model 'cnn' takes no ':variant' suffix"),
        (
            "data: {name: synthetic, options: {train_size: 9000000, image_size: 1024}}",
            "GiB to generate, this machine has",
        ),
    ],
)
def test_nonsense_is_refused_with_one_line(capsys, tmp_path, yaml_text, expected, no_training):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**yaml.safe_load(TINY), **yaml.safe_load(yaml_text)}))
    code, err = run_cli(capsys, "run", str(path))
    assert code == 2, err
    assert expected in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    assert "instance of" not in err  # no internal class names


def test_a_nan_is_called_nan_and_a_union_gives_one_message(capsys, tmp_path, no_training):
    path = tmp_path / "run.yaml"
    path.write_text(TINY + "optim: {lr: .nan}\n")
    _, err = run_cli(capsys, "run", str(path))
    assert "NaN" in err
    assert "less than or equal" not in err
    path.write_text(TINY + "policy: {name: eskd, options: {stop_at: abc}}\nteacher: cnn\nmethods: [kd]\n")  # new keys
    _, err = run_cli(capsys, "run", str(path))
    assert err.count("policy.options.stop_at") == 1
    assert ".int" not in err
    assert ".float" not in err


@pytest.mark.parametrize(
    ("device", "expected"),
    [("cuda", "no usable CUDA GPU"), ("cuda:99", "'cuda:99'"), ("mps", "no usable Apple GPU")],
)
def test_a_device_this_machine_lacks(capsys, tmp_path, monkeypatch, device, expected, no_training):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: device == "cuda:99")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    if getattr(torch.backends, "mps", None) is not None:
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**yaml.safe_load(TINY), "train": {"device": device, "progress": False}}))
    code, err = run_cli(capsys, "run", str(path))
    assert code == 2
    assert f"train.device: '{device}'" in err
    assert expected in err
    if device == "cuda:99":
        assert "this machine has 1 CUDA device (cuda:0 .. cuda:0)" in err


def test_a_tracking_store_that_is_not_a_database(capsys, tmp_path, no_training):
    bogus = tmp_path / "notes.db"
    bogus.write_text("these are notes, not a database")
    path = tmp_path / "run.yaml"
    path.write_text(TINY + f"tracking: {{uri: 'sqlite:///{bogus}'}}\n")
    code, err = run_cli(capsys, "run", str(path))
    assert code == 2
    assert "is not an SQLite database" in err
    code, err = run_cli(capsys, "run", str(path), "--tracking-uri", f"sqlite:///{tmp_path}/missing/dir/m.db")
    assert code == 2
    assert "does not exist" in err


def test_an_unreachable_tracking_server_fails_fast_naming_it(capsys, tmp_path):
    import socket
    import time

    from kdhub.tracking import Tracker

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    start = time.monotonic()
    with pytest.raises(KdhubError, match=f"tracking.uri: cannot reach {uri}"):
        Tracker(uri, "tests")
    assert time.monotonic() - start < 10  # MLflow alone retries for minutes


@pytest.mark.parametrize(
    ("model", "options", "expected"),
    [
        ("timm:resnet18", {"kwargs": {"foo": 1}}, "student.options.kwargs: timm model 'resnet18' does not take 'foo'"),
        ("torchvision:resnet18", {"kwargs": {"foo": 1}}, "torchvision model 'resnet18' does not take 'foo'"),
    ],
)
def test_unknown_model_builder_arguments(capsys, tmp_path, model, options, expected, no_training):
    from kdhub.contract.config_loading import parse_config
    from kdhub.contract.errors import KdhubError as Error
    from kdhub.engine.loop import Trainer
    from kdhub.registry.loading import get_registry
    from kdhub.registry.resolve import resolve_plugins

    config = parse_config(
        {"student": {"name": model, "options": options}, "data": {"name": "digits"}, "train": {"progress": False}}
    )
    resolve_plugins(config, get_registry())
    with pytest.raises(Error) as raised:
        Trainer(config)
    assert expected in str(raised.value)


def test_pretrained_weights_without_network_say_what_to_do(monkeypatch, tmp_path):
    import urllib.error

    from kdhub.contract.config_loading import parse_config
    from kdhub.engine.loop import Trainer
    from kdhub_zoo.models import timm_models

    monkeypatch.setattr(timm_models, "_hub_reachable", lambda timeout=5.0: False)
    config = parse_config({"student": {"name": "timm:resnet18", "options": {"pretrained": True}}})
    with pytest.raises(KdhubError, match=r"student.options.pretrained: .*cannot reach; set pretrained: false"):
        Trainer(config)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    import torch.hub

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # an empty cache
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    config = parse_config({"student": {"name": "torchvision:resnet18", "options": {"weights": "DEFAULT"}}})
    with pytest.raises(
        KdhubError, match=r"^student: torchvision:resnet18: resnet18-\w+\.pth is not in torch hub's cache"
    ):
        Trainer(config)


@pytest.mark.parametrize("dataset", ["cifar10", "fashion_mnist"])
def test_a_dataset_root_that_is_a_file(tmp_path, dataset):
    from kdhub.contract.config_loading import parse_config
    from kdhub.engine.loop import Trainer

    root = tmp_path / "afile"
    root.write_text("not a folder")
    config = parse_config({"student": "cnn", "data": {"name": dataset, "options": {"root": str(root)}}})
    with pytest.raises(KdhubError, match=r"data\.options\.root: .* is a file, not a folder"):
        Trainer(config)


def test_batch_size_larger_than_the_training_set(tmp_path):
    from kdhub.contract.config import ConfigError
    from kdhub.contract.config_loading import parse_config
    from kdhub.engine.loop import Trainer

    config = parse_config({"student": {"name": "cnn", "options": {"width": 4}}, "data": {"batch_size": 4096}})
    with pytest.raises(ConfigError, match=r"data\.batch_size: 4096 is larger than the 1,347 training images"):
        Trainer(config)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--dpi", "0"], "--dpi: 0 is outside 10 .. 1200"),
        (["--dpi", "1000000"], "--dpi: 1000000 is outside 10 .. 1200"),
        (["--tol", "nan"], "--tol: nan is not a finite number >= 0"),
        (["--figures", "{file}/figures/"], "is not a writable folder"),
    ],
)
def test_compare_refuses_bad_output_options_before_reading_runs(capsys, tmp_path, extra, expected):
    (tmp_path / "file").write_text("a file where a folder should be")
    extra = [e.format(file=tmp_path / "file") for e in extra]
    code, err = run_cli(
        capsys, "compare", "--baseline", "a", "b", *extra, "--tracking-uri", f"sqlite:///{tmp_path}/m.db"
    )
    assert code == 2
    assert expected in err
    assert len(err.strip().splitlines()) == 1


def test_third_party_options_refuse_nan_inf_and_booleans_by_default():
    from pydantic import Field, ValidationError

    import kdhub

    class Options(kdhub.Options):  # a third party's options, no bounds given
        scale: float = Field(1.0, description="unbounded float")
        count: int = Field(1, description="unbounded int")
        flag: bool = Field(False, description="a switch")

    for bad in ({"scale": float("nan")}, {"scale": float("inf")}, {"count": True}, {"scale": False}):
        with pytest.raises(ValidationError):
            Options(**bad)
    assert Options(scale="1e-3", count=2, flag=True).scale == 0.001  # YAML's 1e-3 is a string: still a number
