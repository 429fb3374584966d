"""Running a study: the parent run and the schedule (what earlier invocations left:
:mod:`~kdhub.study.resumption`; the summary: :mod:`~kdhub.study.reporting`).

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

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import yaml

from kdhub.contract.errors import KdhubError
from kdhub.study.executors import Executor, check_executor, make_executor
from kdhub.study.plan import expand, search_notes, search_template, substitute
from kdhub.study.reporting import (
    Echo,
    Progress,
    StudySummary,
    _accuracy,
    study_description,
    study_params,
    study_status,
)
from kdhub.study.resumption import (
    HASH_TAG,
    INVOCATION_TAG,
    POINT_TAG,
    ROLE_TAG,
    STUDY_TAG,
    SUPERSEDED_TAG,
    TRIAL_TAG,
    Entry,
    _alive,
    _check_template,
    _quote,
    _study_uri,
    _template_hash,
    classify,
    find_children,
    find_parent,
)
from kdhub.study.search import Search, default_storage, import_optuna
from kdhub.study.spec import PlannedRun, StudyConfig
from kdhub.study.worker import KEY_TAG, Outcome, RunTask
from kdhub.tracking import KIND_TAG, Tracker, find_runs, set_run_state, study_run_tags

__all__ = ["run_study", "study_status"]  # study_status: kdhub.study.reporting


def _print(line: str) -> None:
    print(line, flush=True)


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


class _Study(StudySummary):
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
        old = entry.supersede
        assert old is not None
        status = "KILLED" if old["status"] in ("RUNNING", "SCHEDULED") else None
        set_run_state(self.uri, old["run_id"], status, {SUPERSEDED_TAG: why})

    def _task(self, entry: Entry) -> RunTask:

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
        for child in find_runs(
            self.uri,
            self.study.experiment,
            f"tags.mlflow.parentRunId = '{self.parent.run_id}' and tags.`{KEY_TAG}` = '{_quote(entry.run.key)}'",
        ):
            if child["status"] == "RUNNING":
                entry.run_id = child["run_id"]
                set_run_state(self.uri, child["run_id"], status, {"kdhub.failure": reason})
