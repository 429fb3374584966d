"""What a study reports: a line per state change, the parent run's params and description, the
summary table, the mean ± std per grid point, the comparisons, and ``kdhub study --status``."""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from kdhub.contract.errors import KdhubError
from kdhub.registry.loading import get_registry
from kdhub.study.aggregate import ACCURACIES, aggregate, aggregate_figure, aggregate_metrics
from kdhub.study.plan import compare_groups, expand
from kdhub.study.resumption import (
    HASH_TAG,
    ROLE_TAG,
    STUDY_TAG,
    Entry,
    _alive,
    _latest,
    _study_uri,
    find_children,
    find_parent,
)
from kdhub.study.spec import PlannedRun, StudyConfig
from kdhub.tracking import delete_run, find_runs, flatten, safe_metric_name, store_exists

__all__ = ["Progress", "StudySummary", "study_description", "study_params", "study_status"]

Echo = Callable[[str], None]


# progress -----------------------------------------------------------------------------------------


class Progress:
    """One line per state change, with the live counts."""

    def __init__(self, echo: Echo, total: int) -> None:
        self.echo, self.total = echo, total
        self.running = self.done = self.failed = self.skipped = 0

    def line(self, event: str, what: str, detail: str = "") -> None:
        counts = f"running {self.running}, done {self.done}/{self.total}, failed {self.failed}"
        if self.skipped:
            counts += f", skipped {self.skipped}"
        text = f"{what}: {detail}" if detail else what
        self.echo(f"{time.strftime('%H:%M:%S')}  {event:<9} {text}  [{counts}]")


def _accuracy(metrics: dict[str, float]) -> str:
    last, best = metrics.get("test/acc_last"), metrics.get(ACCURACIES["best"])
    if last is None or not math.isfinite(last):
        return ""
    return f"test {last:.2f}% (best {best:.2f}%)" if best is not None else f"test {last:.2f}%"


class StudySummary(ABC):
    """The summary of a running study: the base of the scheduler (:mod:`kdhub.study.runner`), whose state it reads."""

    study: StudyConfig
    uri: str
    parent: Any
    entries: dict[str, Entry]
    search: Any
    echo: Echo

    @property
    @abstractmethod
    def searched(self) -> PlannedRun:
        """The run a search searches."""

    @abstractmethod
    def _all(self) -> list[Entry]:
        """Every run and trial of this invocation."""

    # summary ----------------------------------------------------------------------------------
    def _rows(self) -> list[dict[str, Any]]:
        rows = []
        for entry in self.entries.values():
            run = entry.run
            rows.append(
                {
                    "run": run.name,
                    "grid": run.label,
                    "seed": run.seed,
                    "point": run.point,
                    "state": entry.state,
                    "earlier": entry.earlier,
                    "run_id": entry.run_id,
                    "metrics": entry.metrics,
                    "seconds": entry.seconds,
                    "reason": entry.reason,
                }
            )
        return rows

    def _summarise(self, final: bool) -> dict[str, Any]:
        parent, rows = self.parent, self._rows()
        summary: dict[str, list[Any]] = {
            k: []
            for k in (
                "run",
                "grid",
                "seed",
                "state",
                "run_id",
                "test_acc_last",
                "test_acc_best",
                "test_acc_at_best_val",
                "seconds",
                "reason",
            )
        }
        for row in rows:
            for key in ("run", "grid", "seed", "state", "run_id", "seconds", "reason"):
                summary[key].append(row[key] if row[key] is not None else "")
            for short in ("last", "best", "at_best_val"):
                summary[f"test_acc_{short}"].append(row["metrics"].get(ACCURACIES[short], math.nan))
        parent.table("study_summary", summary)
        table = aggregate(rows)
        if table["point"]:
            parent.table("study/aggregate", table)
            parent.figure("study/aggregate", aggregate_figure(table, f"{self.study.name}: seeds per grid point"))
        failures = [e for e in self._all() if e.state in ("failed", "skipped")]
        for entry in failures:
            if entry.detail:
                parent.text(f"failures/{entry.run.key}.txt", entry.detail)
        result: dict[str, Any] = {
            "parent_run_id": parent.run_id,
            "summary": summary,
            "rows": rows,
            "aggregate": table,
            "run_ids": self._run_ids(),
            "comparisons": {},
            "failures": [(e.run.display, e.reason, e.input_error) for e in failures],
        }
        if not final:
            return result
        lines = []
        if self.study.compare is not None:
            result["comparisons"], notes = self._compare()
            lines += notes
        if self.search is not None:
            result["search"] = self._search_result()
            lines += self.search.log(
                parent, {t: self.entries[k].run_id or "" for t, k in self.searched.deps.items()}, self.uri
            )
        states = {s: sum(e.state == s for e in self._all()) for s in ("finished", "pruned", "failed", "skipped")}
        parent.metrics({f"study/runs_{k}": v for k, v in states.items()}, step=0)
        parent.metrics({safe_metric_name(k): v for k, v in aggregate_metrics(table).items()}, step=0)
        for line in lines:
            self.echo(line)
        return result

    def _search_result(self) -> dict[str, Any]:
        best = self.search.best()
        return {
            "study_name": self.search.name,
            "storage": self.search.storage_url,
            "best_trial": best.number if best else None,
            "best_value": best.value if best else None,
            "best_params": dict(best.params) if best else {},
            "best_run_id": best.user_attrs.get("mlflow_run_id") if best else None,
            "trials": self.search.table(),
        }

    def _run_ids(self) -> dict[int, dict[str, str]]:
        ids: dict[int, dict[str, str]] = {}
        for entry in self.entries.values():
            if entry.run_id:
                ids.setdefault(entry.run.seed, {}).setdefault(entry.run.name, entry.run_id)
        return ids

    def _finished_ids(self, runs: list[PlannedRun]) -> list[str]:
        return [e.run_id for e in (self.entries[r.key] for r in runs) if e.state == "finished" and e.run_id]

    def _compare(self) -> tuple[dict[str, Any], list[str]]:
        """One comparison per compared run and grid point (its seeds averaged), nested under the parent."""

        spec = self.study.compare
        assert spec is not None
        for old in find_runs(
            self.uri,
            self.study.experiment,
            f"tags.mlflow.parentRunId = '{self.parent.run_id}' and tags.`{ROLE_TAG}` = 'compare'",
        ):
            delete_run(self.uri, old["run_id"])  # redone with every finished run below
        comparer: Any = get_registry().create("command", "compare")  # the command plugin that compares runs
        comparisons, notes = {}, []
        for label, base, runs in compare_groups(spec, [e.run for e in self.entries.values()]):
            base_ids, run_ids = self._finished_ids(base), self._finished_ids(runs)
            if not base_ids or not run_ids:
                notes.append(f"comparison {label} vs {spec.baseline} skipped: no finished run on one side")
                continue
            try:
                comparison = comparer.compare(
                    base_ids,
                    run_ids,
                    uri=self.uri,
                    split=spec.split,
                    tol=spec.tol,
                    experiment=self.study.experiment,
                    run_name=f"compare-{label}-vs-{spec.baseline}",
                    tags={"mlflow.parentRunId": self.parent.run_id, STUDY_TAG: self.study.name, ROLE_TAG: "compare"},
                )
            except KdhubError as err:
                notes.append(f"comparison {label} vs {spec.baseline} failed: {err}")
                continue
            scalars = {
                safe_metric_name(f"compare/{label}/{k}"): v for k, v in comparison.scalars().items() if math.isfinite(v)
            }
            self.parent.metrics(scalars, step=0)
            comparisons[label] = comparison
        return comparisons, notes


def study_params(study: StudyConfig) -> dict[str, str]:
    """The parent run's params: the base config (``base.…``), the runs, their grids and the seeds."""
    params = flatten(study.base, "base")
    params["runs"] = ",".join(r.name for r in study.runs)
    params["seeds"] = ",".join(str(s) for s in study.seeds)
    for entry in study.runs:
        for path, values in entry.grid.items():
            params[f"grid.{entry.name}.{path}"] = ",".join(str(v) for v in values)
    return params


def study_description(study: StudyConfig, executor: str) -> str:
    """The parent run's description: what the study runs, and where to look."""
    runs = ", ".join(f"**{r.name}**" + (f" (grid over {', '.join(r.grid)})" if r.grid else "") for r in study.runs)
    lines = [
        f"Study **{study.name}**: {runs}; seeds {', '.join(str(s) for s in study.seeds)}; {executor}.",
        "Each run is a child of this run (tags `kdhub.study_run`, `kdhub.grid`, `seed`); the table"
        " `study_summary` lists them with their accuracies, `study/aggregate` gives mean ± std per grid point.",
    ]
    if study.compare is not None:
        lines.append(
            f"Comparisons against **{study.compare.baseline}** are the child runs tagged `kdhub.kind = compare`;"
            " filter the training charts with ``tags.`kdhub.kind` = 'train'``."
        )
    return "\n\n".join(lines)


# status -------------------------------------------------------------------------------------------


def study_status(study: StudyConfig, tracking_uri: str | None = None) -> dict[str, Any]:
    """The runs of the study and their states in the store, without running anything."""
    plan = expand(study)
    uri = _study_uri(study, tracking_uri)
    parent = find_parent(uri, study) if store_exists(uri) else None
    children = find_children(uri, study, parent["run_id"]) if parent else []
    earlier = _latest(children, "run")
    rows = []
    for run in plan:
        old = earlier.get(run.key)
        state, run_id, metrics = "pending", "", {}
        if old is not None:
            run_id, metrics = old["run_id"], old["metrics"]
            state = {"FINISHED": "finished", "FAILED": "failed", "KILLED": "interrupted"}.get(old["status"], "")
            if old["status"] == "RUNNING":
                state = "running" if parent and _alive(parent) else "interrupted"
            if old["tags"].get(HASH_TAG) != run.hash and state == "finished":
                state = "changed"
        rows.append(
            {
                "run": run.display,
                "state": state,
                "run_id": run_id,
                "test_acc_last": metrics.get("test/acc_last", math.nan),
                "test_acc_best": metrics.get(ACCURACIES["best"], math.nan),
                "reason": old["tags"].get("kdhub.failure", "") if old else "",
            }
        )
    status: dict[str, Any] = {"uri": uri, "parent": parent, "rows": rows, "trials": None}
    if study.search is not None and parent is not None:
        status["trials"] = _trial_states(parent, children)
    return status


def _trial_states(parent: dict[str, Any], children: list[dict[str, Any]]) -> dict[str, Any]:
    counts: dict[str, int] = {}
    best: tuple[float, str] | None = None
    for child in _latest(children, "trial").values():
        state = "pruned" if child["tags"].get("kdhub.state") == "PRUNED" else child["status"].lower()
        counts[state] = counts.get(state, 0) + 1
    tags = parent["tags"]
    if "kdhub.search.best_trial" in tags:
        best = (parent["metrics"].get("search/best_value", math.nan), tags["kdhub.search.best_trial"])
    return {"counts": counts, "best": best}
