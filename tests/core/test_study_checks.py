"""A study's options are checked before anything starts, ``--dry-run`` included: one line each, exit 2."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import yaml

from kdhub.cli import main
from kdhub.contract.errors import KdhubError
from kdhub.study.checks import check_address, probe_ray_address

BASE = {"epochs": 1, "data": {"name": "digits", "val_fraction": 0.1}, "train": {"progress": False}}


def study_file(tmp_path: Path, search: dict | None = None) -> Path:
    spec: dict = {"name": "checks", "base": BASE, "runs": [{"name": "a", "set": {"student": "cnn"}}]}
    if search is not None:
        spec["search"] = {"run": "a", "space": {"optim.lr": {"type": "float", "low": 0.01, "high": 0.1}}, **search}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("kdhub: error: "), captured
    assert "\n" not in err
    assert "Traceback" not in captured.err + captured.out
    return err.removeprefix("kdhub: error: ")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--executor", "ray", "--address", ""], "--address: empty (give the Ray cluster's address"),
        (["--executor", "ray", "--address", "  "], "--address: empty"),
        (["--address", "auto"], "--address auto: only the ray executor joins a cluster; add --executor ray"),
        (["--address", "10.0.0.5:6379"], "--address 10.0.0.5:6379: only the ray executor joins a cluster"),
        (["--executor", "ray", "--address", "http://head:8265"], "--address 'http://head:8265': not a Ray address"),
        (["--executor", "ray", "--address", "head"], "--address 'head': no port (give host:port"),
        (["--executor", "ray", "--address", "head:70000"], "--address 'head:70000': port 70000 is not 1..65535"),
        (["--executor", "ray", "--address", "head name:1"], "--address 'head name:1': not a Ray address"),
    ],
)
def test_a_meaningless_address_is_refused_at_dry_run(argv, message, tmp_path, capsys):
    assert main(["study", str(study_file(tmp_path)), "--dry-run", *argv]) == 2
    assert _one_line(capsys).startswith(message)


@pytest.mark.parametrize(
    ("search", "message"),
    [
        ({"objective": "foo/bar"}, "search.objective: 'foo/bar' is not a metric the runs log every epoch"),
        ({"objective": "acc"}, "search.objective: 'acc' is not a metric the runs log every epoch"),
        ({"storage": "notaurl://x"}, "search.storage: 'notaurl://x' is not a database URL"),
        ({"storage": "optuna.db"}, "search.storage: 'optuna.db' is not a database URL"),
        ({"storage": "sqlite://"}, "search.storage: 'sqlite://' is not a database URL"),
    ],
)
def test_a_search_no_run_can_serve_is_refused_at_dry_run(search, message, tmp_path, capsys):
    assert main(["study", str(study_file(tmp_path, search)), "--dry-run"]) == 2
    assert _one_line(capsys).startswith(message)


@pytest.mark.parametrize(
    "search",
    [
        {"objective": "val/acc"},
        {"objective": "loss/total", "direction": "minimize"},
        {"storage": "sqlite:///optuna.db"},
        {"storage": "postgresql+psycopg2://u@h/db"},
    ],
)
def test_sensible_search_options_pass(search, tmp_path, capsys):
    assert main(["study", str(study_file(tmp_path, search)), "--dry-run"]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("address", ["auto", "local", "10.0.0.5:6379", "ray://head:10001", "ray://head", "[::1]:6379"])
def test_addresses_ray_understands_pass(address):
    check_address("ray", address)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_cluster_is_named_at_once():
    port = _closed_port()
    start = time.monotonic()
    with pytest.raises(KdhubError) as raised:
        probe_ray_address(f"127.0.0.1:{port}")
    assert time.monotonic() - start < 5
    text = str(raised.value)
    assert text.startswith(f"--address 127.0.0.1:{port}: no Ray cluster answers at 127.0.0.1:{port} (")
    assert "ray start --head" in text


def test_a_cluster_that_never_answers_is_given_up_within_the_timeout(monkeypatch):
    monkeypatch.setenv("KDHUB_RAY_CONNECT_TIMEOUT", "0.5")

    def silent(*args, **kwargs):
        time.sleep(0.5)
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", silent)
    with pytest.raises(KdhubError, match=r"no answer within 0\.5 s"):
        probe_ray_address("ray://10.255.255.1:10001")


def test_kdhub_study_with_an_unreachable_address_ends_in_one_line(tmp_path, capsys):
    pytest.importorskip("ray")
    port = _closed_port()
    uri = f"sqlite:///{tmp_path / 'never.db'}"
    start = time.monotonic()
    code = main(["study", str(study_file(tmp_path)), "--executor", "ray", "--address", f"127.0.0.1:{port}",
                 "--tracking-uri", uri])  # fmt: skip
    assert code == 2
    assert time.monotonic() - start < 60
    assert _one_line(capsys).startswith(f"--address 127.0.0.1:{port}: no Ray cluster answers")
