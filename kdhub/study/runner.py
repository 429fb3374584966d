"""Running a study: the parent run, what earlier invocations left, the schedule and the summary.

A run starts as soon as the runs it references have finished (one at a time with the local
executor, in file order; several at a time on Ray); a run whose dependency failed is skipped with
the reason, and the others go on. Every state change prints one line with the live counts.

Rerunning the same study continues it under the same parent run: each run is matched by name,
grid point and seed (the tag ``kdhub.study.key``); a finished run is kept, an interrupted one
resumes from its ``last.pt`` (or starts again when it never wrote one), a failed one runs again
(the old MLflow run is tagged ``kdhub.study.superseded``). A finished run whose config changed since
is refused (``--fresh`` starts a new parent run instead).
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kdhub.contract.errors import ConfigError, KdhubError
from kdhub.study.aggregate import ACCURACIES, aggregate, aggregate_figure
from kdhub.study.executors import Executor, check_executor, make_executor
from kdhub.study.spec import PlannedRun, StudyConfig, compare_groups, config_hash, expand, search_template
from kdhub.study.worker import KEY_TAG, Outcome, RunTask

__all__ = ["run_study", "study_status"]

STUDY_TAG = "kdhub.study"
ROLE_TAG = "kdhub.study.role"
HASH_TAG = "kdhub.study.config"
POINT_TAG = "kdhub.study.point"
TRIAL_TAG = "kdhub.study.trial"
SUPERSEDED_TAG = "kdhub.study.superseded"
INVOCATION_TAG = "kdhub.study.invocation"

Echo = Callable[[str], None]


def _print(line: str) -> None:
    print(line, flush=True)


# the store ----------------------------------------------------------------------------------------


def absolute_uri(uri: str) -> str:
    """A tracking URI every worker reads the same way: local paths made absolute."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///") :]).resolve())
    if "://" not in uri and not uri.startswith("file:"):
        return str(Path(uri).resolve())
    return uri


def _study_uri(study: StudyConfig, tracking_uri: str | None) -> str:
    from kdhub.tracking import tracking_uri as default_uri

    configured = study.base.get("tracking", {}).get("uri") if isinstance(study.base.get("tracking"), dict) else None
    return absolute_uri(default_uri(tracking_uri or configured))


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def find_parent(uri: str, study: StudyConfig) -> dict[str, Any] | None:
    from kdhub.tracking import find_runs

    try:
        parents = find_runs(
            uri,
            study.experiment,
            f"tags.`{STUDY_TAG}` = '{_quote(study.name)}' and tags.`{ROLE_TAG}` = 'parent'",
        )
    except KdhubError:
        raise
    except Exception as err:
        raise KdhubError(f"tracking URI {uri}: cannot read the MLflow store: {str(err).splitlines()[0]}") from None
    return parents[-1] if parents else None


def find_children(uri: str, study: StudyConfig, parent_id: str) -> list[dict[str, Any]]:
    from kdhub.tracking import find_runs

    return find_runs(uri, study.experiment, f"tags.mlflow.parentRunId = '{parent_id}'")


def _alive(parent: dict[str, Any]) -> str | None:
    """Who is running the parent run now, if its study process is alive (its heartbeat is fresh)."""
    from kdhub.tracking import liveness

    if parent["status"] != "RUNNING":
        return None
    alive, why = liveness(parent)
    if not alive or parent["tags"].get("kdhub.pid") == str(os.getpid()):
        return None
    return why


# the state of every run in this invocation --------------------------------------------------------


@dataclass
class Entry:
    run: PlannedRun
    state: str = "pending"  # pending, running, finished, failed, skipped; trials also pruned
    run_id: str | None = None
    earlier: bool = False  # finished in an earlier invocation
    resume_id: str | None = None
    supersede: dict[str, Any] | None = None  # an earlier MLflow run of this key that is redone
    metrics: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    input_error: bool = False
    detail: str = ""
    seconds: float = 0.0
    value: float | None = None


def _latest(children: list[dict[str, Any]], role: str) -> dict[str, dict[str, Any]]:
    by_key: dict[str, dict[str, Any]] = {}
    for child in children:  # oldest first: the latest run of a key wins
        tags = child["tags"]
        if tags.get(ROLE_TAG) == role and SUPERSEDED_TAG not in tags and KEY_TAG in tags:
            by_key[tags[KEY_TAG]] = child
    return by_key


def classify(plan: list[PlannedRun], children: list[dict[str, Any]], uri: str) -> list[Entry]:
    """What to do with every planned run given the runs an earlier invocation left."""
    from kdhub.tracking import metric_max

    earlier = _latest(children, "run")
    entries, conflicts = [], []
    for run in plan:
        entry = Entry(run)
        old = earlier.get(run.key)
        if old is not None:
            same = old["tags"].get(HASH_TAG) == run.hash
            if old["status"] == "FINISHED":
                if same:
                    entry.state, entry.earlier, entry.run_id = "finished", True, old["run_id"]
                    entry.metrics = dict(old["metrics"])
                    if ACCURACIES["best"] not in entry.metrics:  # not logged: the best of the test history
                        entry.metrics[ACCURACIES["best"]] = metric_max(uri, old["run_id"], "test/acc")
                else:
                    conflicts.append(f"{run.display} (run {old['run_id']})")
            elif old["status"] in ("RUNNING", "KILLED", "SCHEDULED") and same:
                # from its last.pt, or from scratch in the same MLflow run when it never wrote one
                entry.resume_id = old["run_id"]
            else:
                entry.supersede = old
        entries.append(entry)
    if conflicts:
        more = f" and {len(conflicts) - 1} more" if len(conflicts) > 1 else ""
        raise ConfigError(
            f"runs: {conflicts[0]}{more} finished with a different config than the study now gives; undo the "
            "change to continue the study, or add --fresh to start it over under a new parent run"
        )
    return entries


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


# the study ----------------------------------------------------------------------------------------


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (what schedulers and kill send) stops the study like Ctrl-C: runs end KILLED, resumable."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_study(
    study: StudyConfig,
    tracking_uri: str | None = None,
    *,
    executor: str = "local",
    parallel: int | None = None,
    address: str | None = None,
    fresh: bool = False,
    echo: Echo = _print,
) -> dict[str, Any]:
    """Run (or continue) every run of the study under one parent MLflow run.

    Returns ``parent_run_id``, ``summary`` (one column per field, a row per run), ``run_ids``
    (seed -> run name -> run id), ``comparisons``, ``aggregate`` (mean ± std per grid point),
    ``failures`` (display, reason, bad input?) and ``search`` (best trial) when there is one.
    """
    plan = expand(study)
    template = search_template(study, plan) if study.search is not None else None
    check_executor(executor, parallel, address)
    if study.search is not None:
        from kdhub.study.search import import_optuna

        import_optuna()
    uri = _study_uri(study, tracking_uri)
    parent_run = None if fresh else find_parent(uri, study)
    if parent_run is not None and (who := _alive(parent_run)):
        raise KdhubError(
            f"study {study.name!r} is being run by {who} (parent run {parent_run['run_id']}); wait for it or stop it"
        )
    children = find_children(uri, study, parent_run["run_id"]) if parent_run else []
    entries = classify(plan, children, uri)
    if template is not None:
        _check_template(template, study, children)
    ex = make_executor(executor, parallel, address, study.resources.cpus)
    try:
        for run in [*plan, *([template] if template else [])]:
            ex.check(run.resources, f"runs.{run.name}.resources")
        return _Study(study, uri, entries, template, ex, echo).run(parent_run, children)
    finally:
        ex.close()


def _template_hash(template: PlannedRun, study: StudyConfig) -> str:
    assert study.search is not None
    spec = study.search.model_dump(mode="json", exclude={"trials", "timeout", "storage"})
    return config_hash({"run": template.config, "search": spec})


def _check_template(template: PlannedRun, study: StudyConfig, children: list[dict[str, Any]]) -> None:
    digest = _template_hash(template, study)
    for child in children:
        tags = child["tags"]
        if tags.get(ROLE_TAG) == "trial" and tags.get(HASH_TAG) != digest and SUPERSEDED_TAG not in tags:
            raise ConfigError(
                f"search: the searched run or the search changed since trial {tags.get(TRIAL_TAG)} "
                f"(run {child['run_id']}); undo the change to continue the search, or add --fresh to start over"
            )


class _Study:
    def __init__(
        self,
        study: StudyConfig,
        uri: str,
        entries: list[Entry],
        template: PlannedRun | None,
        ex: Executor,
        echo: Echo,
    ) -> None:
        self.study, self.uri, self.template, self.ex, self.echo = study, uri, template, ex, echo
        self.entries = {e.run.key: e for e in entries}
        self.trials: list[Entry] = []
        self.running: dict[str, Entry] = {}
        self.search: Any = None
        self.search_note = ""
        self.progress = Progress(echo, len(entries))

    # parent run -------------------------------------------------------------------------------
    def _open_parent(self, parent_run: dict[str, Any] | None) -> Any:
        from kdhub.tracking import KIND_TAG, Tracker, set_run_state

        study = self.study
        parent = Tracker(self.uri, study.experiment)
        try:
            if parent_run is None:
                tags = {KIND_TAG: "study", STUDY_TAG: study.name, ROLE_TAG: "parent", INVOCATION_TAG: "1"}
                parent.start(study.name, tags)
            else:  # the same parent run, reopened
                parent.run_id = parent_run["run_id"]
                invocation = int(parent_run["tags"].get(INVOCATION_TAG, "1")) + 1
                set_run_state(self.uri, parent.run_id, "RUNNING", {INVOCATION_TAG: str(invocation)})
            parent.beat()  # host, pid and a heartbeat: a second invocation sees this one is alive
        except KdhubError:
            raise
        except Exception as err:
            raise KdhubError(f"tracking URI {self.uri}: {str(err).splitlines()[0]}") from None
        parent.tags({"kdhub.study.executor": self.ex.describe()})
        parent.text("study.yaml", yaml.safe_dump(study.model_dump(mode="json", exclude_none=True), sort_keys=False))
        if parent_run is None:
            parent.params(study_params(study))
            parent.describe(study_description(study, self.ex.describe()))
        return parent

    def run(self, parent_run: dict[str, Any] | None, children: list[dict[str, Any]]) -> dict[str, Any]:
        parent = self.parent = self._open_parent(parent_run)
        entries = list(self.entries.values())
        if self.template is not None:
            self._open_search(children)
            self.progress.total += self.search.target
        kept = sum(e.earlier for e in entries)
        resumed = sum(e.resume_id is not None for e in entries)
        self.progress.done = kept + (self.search.done() if self.search is not None else 0)
        what = f"{len(entries)} run{'s' if len(entries) != 1 else ''}"
        if parent_run is not None:
            what += f" ({kept} finished earlier, {resumed} to resume, {len(entries) - kept - resumed} to run)"
        if self.search is not None:
            what += f" and a search of {self.search.target} trials ({self.search.done()} done earlier)"
        verb = "continues" if parent_run else "starts"
        self.echo(f"study {self.study.name} {verb}: {what} on {self.ex.describe()}")
        self.echo(f"parent run {parent.run_id} in experiment {self.study.experiment!r} of {self.uri}")
        if self.template is not None:
            from kdhub.study.spec import search_notes

            for note in search_notes(self.study, self.template):
                self.echo(note)
        for entry in entries:
            if entry.earlier:
                self.progress.line("kept", entry.run.display, f"{_accuracy(entry.metrics)} (run {entry.run_id})")
        try:
            with _sigterm_as_interrupt():
                self._schedule()
        except KeyboardInterrupt:
            self.ex.cancel()
            for entry in self.running.values():  # a run the executor could not stop in time
                self._mark_lost(entry, "KILLED", "interrupted with the study; rerun the study to resume it")
            if self.search is not None:
                self.search.abort()
            self._summarise(final=False)
            parent.finish("KILLED", "interrupted; rerun the same command to continue (finished runs are kept)")
            raise
        except BaseException as err:
            self.ex.cancel()
            self._summarise(final=False)
            parent.finish("FAILED", f"{type(err).__name__}: {err}")
            raise
        result = self._summarise(final=True)
        failed = [e for e in self._all() if e.state in ("failed", "skipped")]
        if failed:
            parent.finish(
                "FAILED", f"{len(failed)} runs did not finish; first: {failed[0].run.display}: {failed[0].reason}"
            )
        else:
            parent.finish("FINISHED")
        return result

    def _all(self) -> list[Entry]:
        return [*self.entries.values(), *self.trials]

    # search -----------------------------------------------------------------------------------
    def _open_search(self, children: list[dict[str, Any]]) -> None:
        from kdhub.study.search import Search, default_storage

        spec, template = self.study.search, self.template
        assert spec is not None
        assert template is not None
        storage = spec.storage or default_storage(self.uri)
        self.search = Search(spec, self.study.name, self.parent.run_id, template, storage)
        self.parent.tags({"kdhub.search.storage": storage, "kdhub.search.study": self.search.name})
        self.resumable: list[Entry] = []
        trial_runs = {}
        for child in children:
            tags = child["tags"]
            if tags.get(ROLE_TAG) == "trial" and SUPERSEDED_TAG not in tags:
                trial_runs[int(tags.get(TRIAL_TAG, "-1"))] = child
        for trial in self.search.interrupted():
            found = trial_runs.get(trial.number)
            run = self.search.planned(trial.number, trial._trial_id, trial.params)
            entry = Entry(run)
            if found is not None and found["tags"].get("kdhub.state") == "PRUNED":
                self.search.tell(run, Outcome(run.key, "PRUNED"))
            elif found is not None and found["status"] == "FINISHED" and self.search.value(trial) is not None:
                # the study stopped between the trial's end and telling Optuna
                self.search.tell(run, Outcome(run.key, "FINISHED", value=self.search.value(trial)))
            elif found is not None and found["status"] in ("RUNNING", "KILLED"):
                entry.resume_id = found["run_id"]  # from its last.pt, or from scratch in the same run
                self.resumable.append(entry)
            else:  # its run failed, or never started: ask again with the same values
                self.search.running.discard(trial.number)
                self.search.abandon(trial)
                if found is not None:
                    entry.supersede = found
                    self._supersede(entry, "its trial was asked again")

    @property
    def searched(self) -> PlannedRun:
        """The search's template run (only with a search)."""
        assert self.template is not None
        return self.template

    def _launch_trials(self) -> None:
        search = self.search
        blocked, ready = self._deps(self.searched)
        if blocked:
            if not self.search_note:
                self.search_note = f"search skipped: {blocked}"
                self.progress.line("skipped", "search", blocked)
                self.progress.skipped += 1
            return
        if not ready:
            return
        while self.resumable and self._free():
            self._launch(self.resumable.pop(0))
        while self._free() and search.can_ask():
            entry = Entry(search.ask())
            self._launch(entry)

    # scheduling -------------------------------------------------------------------------------
    def _free(self) -> bool:
        return self.ex.running() < self.ex.slots

    def _deps(self, run: PlannedRun) -> tuple[str, bool]:
        ready = True
        for key in run.deps.values():
            dep = self.entries[key]
            if dep.state in ("failed", "skipped"):
                return f"needs {dep.run.display}, which {'failed' if dep.state == 'failed' else 'was skipped'}", False
            ready = ready and dep.state == "finished"
        return "", ready

    def _schedule(self) -> None:
        while True:
            for entry in self.entries.values():
                if entry.state != "pending":
                    continue
                blocked, ready = self._deps(entry.run)
                if blocked:
                    entry.state, entry.reason = "skipped", blocked
                    self.progress.skipped += 1
                    self.progress.line("skipped", entry.run.display, blocked)
                elif ready and self._free():
                    self._launch(entry)
            if self.search is not None:
                self._launch_trials()
            if self.ex.running() == 0:
                break
            for outcome in self.ex.wait():
                self._ended(self.running.pop(outcome.key), outcome)

    def _supersede(self, entry: Entry, why: str) -> None:
        from kdhub.tracking import set_run_state

        old = entry.supersede
        assert old is not None
        status = "KILLED" if old["status"] in ("RUNNING", "SCHEDULED") else None
        set_run_state(self.uri, old["run_id"], status, {SUPERSEDED_TAG: why})

    def _task(self, entry: Entry) -> RunTask:
        from kdhub.study.spec import substitute
        from kdhub.tracking import study_run_tags

        run, study = entry.run, self.study
        ids = {text: self.entries[key].run_id or "" for text, key in run.deps.items()}
        config = substitute(run.config, ids)
        tracking = dict(config.get("tracking") or {})
        tags = {
            **tracking.get("tags", {}),
            **study_run_tags(study.name, run.name, run.label, run.seed, self.parent.run_id),
            ROLE_TAG: run.role,
            KEY_TAG: run.key,
            POINT_TAG: run.point,
            HASH_TAG: run.hash,
        }
        if run.role == "trial":
            tags[TRIAL_TAG] = run.label.removeprefix("trial-")
            tags[HASH_TAG] = _template_hash(self.searched, study)
        name = f"{run.name}-{run.label}" if run.role == "trial" else run.key
        tracking.update(uri=self.uri, experiment=study.experiment, run_name=name, tags=tags)
        config["tracking"] = tracking
        parallel = self.ex.name != "local"
        if parallel:  # progress bars of runs side by side would garble each other
            config.setdefault("train", {})["progress"] = False
        return RunTask(
            run.key,
            run.display,
            config,
            resume_run_id=entry.resume_id,
            threads=max(1, int(run.resources.cpus)) if parallel else None,
            cwd=os.getcwd(),
            trial=self.search.link(run) if run.role == "trial" else None,
            params=run.params,
            worker=parallel,
        )

    def _launch(self, entry: Entry) -> None:
        if entry.supersede is not None and entry.run.role == "run":
            why = (
                "rerun: it failed"
                if entry.supersede["status"] == "FAILED"
                else "rerun: interrupted, and its config changed since"
            )
            self._supersede(entry, why)
        task = self._task(entry)
        self.ex.submit(task, entry.run.resources)
        entry.state = "running"
        self.running[task.key] = entry
        if entry.run.role == "trial" and entry not in self.trials:
            self.trials.append(entry)
        self.progress.running += 1
        self.progress.line(
            "resumed" if entry.resume_id else "started",
            entry.run.display,
            f"from run {entry.resume_id}" if entry.resume_id else "",
        )

    def _ended(self, entry: Entry, outcome: Outcome) -> None:
        entry.run_id = outcome.run_id or entry.resume_id
        entry.metrics, entry.seconds, entry.value = outcome.metrics, outcome.seconds, outcome.value
        self.progress.running -= 1
        if self.search is not None and entry.run.role == "trial":
            self.search.tell(entry.run, outcome)
        what = entry.run.display
        if outcome.status == "FINISHED":
            entry.state = "finished"
            self.progress.done += 1
            detail = _accuracy(outcome.metrics)
            if outcome.value is not None:
                detail = f"{self.search.spec.objective} {outcome.value:.4g}"
            self.progress.line("finished", what, f"{detail}, {outcome.seconds:.0f} s")
        elif outcome.status == "PRUNED":
            entry.state, entry.reason = "pruned", outcome.error or "pruned"
            self.progress.done += 1
            self.progress.line("pruned", what, entry.reason.removeprefix("pruned by the median pruner "))
        else:
            entry.state, entry.reason = "failed", outcome.error or "failed"
            entry.input_error, entry.detail = outcome.input_error, outcome.detail
            self.progress.failed += 1
            self.progress.line("failed", what, entry.reason)
            if outcome.run_id is None:
                self._mark_lost(entry, "FAILED", entry.reason)

    def _mark_lost(self, entry: Entry, status: str, reason: str) -> None:
        """A run whose worker died (or was stopped) left its MLflow run RUNNING: end it with the reason."""
        from kdhub.tracking import find_runs, set_run_state

        for child in find_runs(
            self.uri,
            self.study.experiment,
            f"tags.mlflow.parentRunId = '{self.parent.run_id}' and tags.`{KEY_TAG}` = '{_quote(entry.run.key)}'",
        ):
            if child["status"] == "RUNNING":
                entry.run_id = child["run_id"]
                set_run_state(self.uri, child["run_id"], status, {"kdhub.failure": reason})

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
        from kdhub.registry.loading import get_registry
        from kdhub.tracking import delete_run, find_runs, safe_metric_name

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
    from kdhub.tracking import flatten

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
    from kdhub.tracking import store_exists

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
