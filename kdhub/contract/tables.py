"""The tables that metrics log and that comparisons, studies and the demo read back.

A metric that logs one of these tables declares it (``tables = (PER_CLASS_ACCURACY,)``) and
names it by ``schema.name``; readers find it in a run as ``schema.key(split)``. Any metric that
logs a table of the same shape may declare it too, so comparisons work with it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kdhub.contract.errors import KdhubError
from kdhub.contract.runlog import Table

__all__ = ["AGREEMENT", "PER_CLASS_ACCURACY", "TableSchema"]


@dataclass(frozen=True)
class TableSchema:
    """A named per-run table: its columns and what each holds."""

    name: str
    columns: dict[str, str] = field(default_factory=dict)
    optional: frozenset[str] = frozenset()

    def __repr__(self) -> str:
        return f"TableSchema({self.name!r})"

    def key(self, split: str) -> str:
        """The name the table is logged under for ``split`` (``test/per_class_accuracy``)."""
        return f"{split}/{self.name}"

    def check(self, table: Table, where: str = "") -> None:
        """Raise a KdhubError naming the missing columns of a table read back from a run."""
        missing = [c for c in self.columns if c not in table and c not in self.optional]
        if missing:
            raise KdhubError(f"{where or self.name}: table has no column {', '.join(repr(c) for c in missing)}")


PER_CLASS_ACCURACY = TableSchema(
    "per_class_accuracy",
    {
        "class": "class index",
        "name": "class name",
        "count": "samples of the class in the split",
        "student": "student accuracy on the class, percent (NaN for an empty class)",
        "teacher": "teacher accuracy on the class, percent (only with a teacher)",
    },
    optional=frozenset({"teacher"}),
)
"""Per-class top-1 accuracy: what ΔACC and undistillable classes are computed from."""

AGREEMENT = TableSchema(
    "agreement",
    {
        "class": "class index",
        "name": "class name",
        "count": "samples of the class (by true label)",
        "pa_by_label": "top-1 agreement of student and teacher on the samples of the class, percent",
        "pa_by_teacher": "agreement on the samples the teacher assigns to the class, percent",
    },
)
"""Per-class prediction agreement with the teacher: what ΔPA is computed from."""
