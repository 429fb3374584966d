import json

import pytest

from kdhub.commands.cli import main


def test_plugins_json_lists_builtins_and_the_template(capsys):
    assert main(["plugins", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    by_dist = {}
    for plugin in payload["plugins"]:
        for kind, names in plugin["registers"].items():
            by_dist.setdefault(plugin["distribution"], {}).setdefault(kind, []).extend(names)
    assert "kd" in by_dist["kdhub"]["method"]
    assert "constant" in by_dist["kdhub"]["policy"]
    assert by_dist["kdhub-cosine"] == {"method": ["cosine"]}
    assert payload["errors"] == []


def test_show_prints_doc_and_options_table(capsys):
    assert main(["show", "method", "kd"]) == 0
    out = capsys.readouterr().out
    assert "Hinton" in out
    assert "temperature" in out
    assert "default 4.0" in out
    assert ">= 0.01" in out


def test_list_with_pattern(capsys):
    assert main(["list", "method", "*kd*"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert "kd" in names
    assert "dkd" in names
    assert "fitnet" not in names


def _all_plugins():
    import kdhub

    return [
        (kind, name) for kind in ("method", "policy", "metric", "model", "dataset") for name in kdhub.list_plugins(kind)
    ]


@pytest.mark.parametrize(("kind", "name"), _all_plugins())
def test_every_plugin_has_a_summary_docs_and_described_options(kind, name, capsys):
    import kdhub

    cls = kdhub.get_plugin(kind, name)
    assert cls.summary(), f"{kind} {name} has no docstring"
    for field_name, field in cls.Options.model_fields.items():
        assert field.description, f"{kind} {name}: option {field_name!r} has no description"
    assert main(["show", kind, name]) == 0
    assert name in capsys.readouterr().out
