import re
from pathlib import Path

from kdhub.registry.reference import config_reference

DOCS = Path(__file__).parents[2] / "docs"


def test_config_reference_is_up_to_date():
    assert (DOCS / "config.md").read_text() == config_reference(), "regenerate: make docs"


def test_config_reference_lists_every_section():
    text = config_reference()
    for key in (
        "`seed`",
        "`data.val_fraction`",
        "`methods[i].weight`",
        "`metrics[i].every`",
        "`optim.lr`",
        "`tracking.uri`",
    ):
        assert key in text


def _suite_time(path: Path) -> str:
    line = next(line for line in path.read_text().splitlines() if line.startswith("make test "))
    return re.search(r"about (\d+) minutes", line).group(1)


def test_readme_and_contributing_state_the_same_suite_time():
    root = DOCS.parent
    assert _suite_time(root / "README.md") == _suite_time(root / "CONTRIBUTING.md")
