"""A generated corpus of bad configs: every key of the run config and every option of every built-in plugin.

For each key the generator derives bad values from the key's declared type: a wrong type, a
boolean where a number is expected, NaN, ±inf, a huge value, a value just outside each bound, an
empty string, a 100,000-character string. Each config goes through the CLI (``kdhub.cli.main``
in-process, for speed; a few real subprocesses below) and must end with exit code 2, one line
naming the key, and no traceback -- before any data is loaded: ``run`` is replaced by a function
that fails the test, so a value that is accepted is reported instead of trained on.
"""

from __future__ import annotations

import copy
import math
import re
import subprocess
import sys
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel

from kdhub.commands import cli
from kdhub.contract.config import RunConfig
from kdhub.registry.loading import get_registry

NAN, INF = math.nan, math.inf
HUGE_INT = 10**30
HUGE_FLOAT = 1e300
INTERNAL = re.compile(r"instance of|\b\w+(Ref|Config|Options)\b|function-|\.int\b|\.float\b")
HUGE_TEXT = "x" * 10_001  # above every string limit (MLflow tag values: 8,000)

BASE: dict[str, Any] = {"student": {"name": "cnn", "options": {"width": 4}}, "epochs": 2, "train": {"progress": False}}
TEACHER = {"teacher": {"name": "cnn", "options": {"width": 4}}}
# a valid ':variant' for the model plugins that need one
VARIANTS = {"timm": "resnet18", "torchvision": "resnet18", "wrn": "40_2"}


def _plain(value: Any) -> Any:
    """A default as YAML data (pydantic models dumped)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _strip(annotation: Any) -> tuple[Any, list[Any]]:
    """(the type without Annotated / Optional, the metadata of the Annotated layers)."""
    metadata: list[Any] = []
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation, *extra = get_args(annotation)
            metadata += extra
        elif origin in (Union, types.UnionType) and type(None) in get_args(annotation):
            rest = [a for a in get_args(annotation) if a is not type(None)]
            annotation = rest[0] if len(rest) == 1 else Union[tuple(rest)]
        else:
            return annotation, metadata


def _bounds(metadata: list[Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for meta in metadata:
        for attr in ("gt", "ge", "lt", "le", "min_length", "max_length"):
            value = getattr(meta, attr, None)
            if value is not None:
                found[attr] = value
        for inner in getattr(meta, "metadata", []) or []:  # FieldInfo inside Annotated
            found.update(_bounds([inner]))
    return found


def _number_cases(kind: type, bounds: dict[str, Any]) -> list[tuple[str, Any]]:
    cases: list[tuple[str, Any]] = [
        ("wrong type", "abc"),
        ("a list", [1]),
        ("a boolean", True),
        ("NaN", NAN),
        ("inf", INF),
        ("-inf", -INF),
        ("huge", HUGE_INT if kind is int else HUGE_FLOAT),
        ("huge negative", -HUGE_INT if kind is int else -HUGE_FLOAT),
        ("empty", ""),
    ]
    if kind is int:
        cases.append(("a fraction", 1.5))
    if "ge" in bounds:
        cases.append(("below ge", bounds["ge"] - (1 if kind is int else max(1e-3, abs(bounds["ge"]) * 1e-3))))
    if "gt" in bounds:
        cases.append(("at gt", bounds["gt"]))
    if "le" in bounds:
        cases.append(("above le", bounds["le"] + (1 if kind is int else max(1e-3, abs(bounds["le"]) * 1e-3))))
    if "lt" in bounds:
        cases.append(("at lt", bounds["lt"]))
    return cases


def bad_values(annotation: Any, metadata: list[Any], default: Any) -> list[tuple[str, Any]]:
    """Bad values for a field, from its declared type and bounds."""
    inner, more = _strip(annotation)
    bounds = _bounds(metadata + more)
    origin = get_origin(inner)
    if inner is bool:
        return [("wrong type", "maybe"), ("an int", 2), ("a list", [True]), ("a mapping", {"a": 1})]
    if inner in (int, float):
        return _number_cases(inner, bounds)
    if inner is str:
        cases = [("a number", 5), ("a list", ["a"]), ("huge", HUGE_TEXT)]
        if default != "":
            cases.append(("empty", ""))
        return cases
    if origin is Literal:
        return [("not a choice", "not-a-choice"), ("a list", ["x"]), ("a mapping", {"a": 1})]
    if origin in (Union, types.UnionType):  # an int-or-fraction union
        return [
            ("wrong type", "abc"),
            ("a boolean", True),
            ("NaN", NAN),
            ("inf", INF),
            ("negative", -1),
            ("huge", HUGE_INT),
            ("above 1, not whole", 1.5),
        ]
    if origin in (list, tuple):
        element = [a for a in get_args(inner) if a is not Ellipsis]
        cases = [("wrong type", 5), ("a mapping", {"a": 1})]
        if "max_length" in bounds:
            cases.append(("too long", [default[0] if default else 0] * (bounds["max_length"] + 1)))
        if element and not (isinstance(element[0], type) and issubclass(element[0], BaseModel)):
            fill = list(default) if default else None
            for label, value in bad_values(element[0], [], None):
                if fill is None:
                    cases.append((f"item: {label}", [value] * max(1, len(element))))
                else:
                    cases.append((f"item: {label}", [value, *fill[1:]]))
        return cases
    if origin is dict:
        return [("wrong type", 5), ("a list", [1])]
    if isinstance(inner, type) and issubclass(inner, BaseModel):
        return [("a number", 5), ("a list", [1])]
    raise AssertionError(f"no bad values for {annotation!r}: extend the generator")


# the run config --------------------------------------------------------------------------------------


def run_config_cases() -> list[tuple[str, dict[str, Any]]]:
    cases: list[tuple[str, dict[str, Any]]] = []

    def walk(model: type[BaseModel], prefix: list[str]) -> None:
        for name, field in model.model_fields.items():
            path = [*prefix, name]
            default = None if field.is_required() else _plain(field.get_default(call_default_factory=True))
            for label, value in bad_values(field.annotation, list(field.metadata), default):
                config = yaml.safe_load(yaml.safe_dump(BASE))
                if path[0] in ("methods", "teacher"):  # a method needs a teacher
                    config.update(copy.deepcopy(TEACHER))
                node = config
                for part in path[:-1]:
                    if part in ("methods", "metrics"):
                        node[part] = [{"name": "kd" if part == "methods" else "accuracy"}]
                        node = node[part][0]
                    else:
                        node = node.setdefault(part, {}) if isinstance(node.get(part, {}), dict) else {}
                node[path[-1]] = value
                cases.append((f"{'.'.join(path)} {label}", config))
            inner = _strip(field.annotation)[0]
            element = get_args(inner)[0] if get_origin(inner) is list else inner
            if isinstance(element, type) and issubclass(element, BaseModel) and name not in ("policy",):
                walk(element, path)

    walk(RunConfig, [])
    return cases


# the built-in plugins --------------------------------------------------------------------------------


def _slot(kind: str, name: str, options: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """A config that uses plugin ``name`` with ``options``, and the config path of its options."""
    config = yaml.safe_load(yaml.safe_dump(BASE))
    ref = {"name": name, "options": options}
    if kind == "method":
        config.update(copy.deepcopy(TEACHER), methods=[ref])
        return config, "methods.0"
    if kind == "policy":
        config.update(copy.deepcopy(TEACHER), methods=["kd"], policy=ref)
        config["data"] = {"val_fraction": 0.1}
        return config, "policy"
    if kind == "metric":
        config.update(copy.deepcopy(TEACHER), metrics=[ref])
        return config, "metrics.0"
    if kind == "model":
        config["student"] = ref
        return config, "student"
    config["data"] = ref
    return config, "data"


def plugin_cases() -> dict[str, list[tuple[str, dict[str, Any], str]]]:
    registry = get_registry()
    out: dict[str, list[tuple[str, dict[str, Any], str]]] = {}
    for entry in registry.entries():
        if entry.source != "kdhub":
            continue
        cases = out.setdefault(f"{entry.kind}:{entry.name}", [])
        fields = entry.cls.Options.model_fields
        for field_name, field in fields.items():
            default = None if field.is_required() else _plain(field.get_default(call_default_factory=True))
            if field_name == "kwargs":  # extra model-builder arguments: checked when the model is built
                continue
            name = entry.name
            if "variant" in fields and field_name != "variant":
                name = f"{entry.name}:{VARIANTS[entry.name]}" if entry.name in VARIANTS else name
            for label, value in bad_values(field.annotation, list(field.metadata), default):
                config, path = _slot(entry.kind, name, {field_name: value})
                if field_name == "variant" and entry.name not in VARIANTS:
                    continue  # the zoo families fix their variant in the name
                cases.append((f"{field_name} {label}", config, path))
    return out


class _NoAliases(yaml.SafeDumper):
    """Repeated values written out in full (kdhub's loader allows few aliases)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


RUN_CASES = run_config_cases()
PLUGIN_CASES = plugin_cases()


@pytest.fixture
def refuse_training(monkeypatch):
    """Anything that reaches ``run`` was accepted: fail with the config instead of training."""
    import kdhub.engine.runner

    def accepted(config, resume_run_id=None, track=True):
        raise AssertionError("accepted")

    monkeypatch.setattr(kdhub.engine.runner, "run", accepted)


def _check(cases, tmp_path, capsys, where) -> list[str]:
    problems = []
    path = tmp_path / "bad.yaml"
    for label, config, expect in cases:
        path.write_text(yaml.dump(config, Dumper=_NoAliases))
        try:
            code = cli.main(["run", str(path), "--tracking-uri", f"sqlite:///{tmp_path / 'never.db'}"])
        except AssertionError:
            problems.append(f"{where} {label}: accepted")
            capsys.readouterr()
            continue
        except BaseException as err:  # a traceback is what this test exists to catch
            problems.append(f"{where} {label}: raised {type(err).__name__}: {err}")
            continue
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("kdhub: warning:")]
        if code != 2:
            problems.append(f"{where} {label}: exit {code}")
        elif not lines or not lines[0].startswith("kdhub: error: ") or "Traceback" in err:
            problems.append(f"{where} {label}: not an error line: {err[-300:]!r}")
        elif any(expect not in line for line in lines):  # one line per problem, each naming its key
            problems.append(f"{where} {label}: {expect!r} not named in {err[:300]!r}")
        elif INTERNAL.search(err):
            problems.append(f"{where} {label}: names an internal class: {err[:300]!r}")
    return problems


def test_the_generator_covers_every_key():
    keys = {label.split(" ")[0] for label, _ in RUN_CASES}
    for must in ("seed", "epochs", "optim.betas", "schedule.milestones", "tracking.tags", "metrics.at", "train.device"):
        assert must in keys
    assert len(PLUGIN_CASES) >= 40  # every built-in method, policy, metric, model and dataset
    assert sum(len(c) for c in PLUGIN_CASES.values()) > 500


def test_every_bad_run_config_value_exits_2_with_one_line(tmp_path, capsys, refuse_training):
    cases = [(label, config, label.split(" ")[0].split(".")[0]) for label, config in RUN_CASES]
    problems = _check(cases, tmp_path, capsys, "run config")
    assert not problems, f"{len(problems)} of {len(cases)} bad values were not refused cleanly:\n" + "\n".join(problems)


@pytest.mark.parametrize("plugin", sorted(PLUGIN_CASES))
def test_every_bad_plugin_option_exits_2_with_one_line(plugin, tmp_path, capsys, refuse_training):
    cases = PLUGIN_CASES[plugin]
    problems = _check(cases, tmp_path, capsys, plugin)
    assert not problems, f"{len(problems)} of {len(cases)} bad options were not refused cleanly:\n" + "\n".join(
        problems
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"\x89PNG\r\n\x1a\n\x00binary", "not UTF-8 text"),
        (b"student: cnn\noptim: {lr: .nan}\n", "optim.lr: NaN is not allowed"),
    ],
)
def test_real_processes_exit_2_without_a_traceback(tmp_path, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_bytes(text)
    proc = subprocess.run(
        [sys.executable, "-m", "kdhub.cli", "run", str(path), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert expected in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "m.db").exists()  # refused before any run or store was created
