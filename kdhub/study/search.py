"""The ``search:`` section of a study: an Optuna search over the config of one run.

The study process asks Optuna for trials (ask-and-tell) and runs each as a run of the study
through the same executor (several at a time on Ray). A trial's run reports its objective after
every epoch to the same Optuna storage, where the median pruner decides (see
:mod:`kdhub.study.worker`). The storage is an SQLite file ``optuna.db`` beside the MLflow store by
default, named after the study's parent run, so rerunning the study continues the search: finished
and pruned trials count towards the budget, an interrupted trial resumes from its ``last.pt`` (or
is asked again with the same values), and a failed trial is replaced by a new one.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any

import yaml

from kdhub.contract.errors import KdhubError
from kdhub.study.plan import _set, substitute
from kdhub.study.spec import ChoiceParam, FloatParam, IntParam, PlannedRun, SearchSpec
from kdhub.study.storage import default_storage, import_optuna, open_storage, pruner
from kdhub.study.worker import Outcome, TrialLink, reduce_values
from kdhub.tracking import find_runs, set_run_state

__all__ = ["Search", "default_storage", "import_optuna", "open_storage", "pruner"]


def _distribution(param: Any) -> Any:
    optuna = import_optuna()
    dist = optuna.distributions
    if isinstance(param, FloatParam):
        return dist.FloatDistribution(param.low, param.high, log=param.log, step=param.step)
    if isinstance(param, IntParam):
        return dist.IntDistribution(param.low, param.high, log=param.log, step=param.step)
    assert isinstance(param, ChoiceParam)
    return dist.CategoricalDistribution(param.choices)


def _short(path: str) -> str:
    return path.split(".")[-1]


class Search:
    """The Optuna study behind a study's ``search:`` section, for one parent run."""

    def __init__(self, spec: SearchSpec, study_name: str, parent_id: str, template: PlannedRun, storage: str) -> None:
        optuna = import_optuna()
        self.optuna, self.spec, self.template = optuna, spec, template
        self.storage_url = storage
        self.name = f"kdhub:{study_name}:{parent_id}"
        self.distributions = {path: _distribution(p) for path, p in spec.space.items()}
        grid = {path: p.grid() for path, p in spec.space.items()} if spec.sampler == "grid" else {}
        self.size = math.prod(len(v) for v in grid.values()) if grid else None
        try:
            self.study = optuna.create_study(
                study_name=self.name,
                storage=open_storage(storage),
                pruner=pruner(spec.pruner == "median", spec.startup_trials, spec.warmup_epochs),
                direction=spec.direction,
                load_if_exists=True,
            )
        except Exception as err:
            raise KdhubError(f"search.storage: cannot open Optuna storage {storage}: {err}".splitlines()[0]) from None
        # The sampler's state is not stored: a continued search seeds it past the trials so far, or its
        # random draws would repeat the first invocation's.
        seed = spec.seed + len(self.study.get_trials(deepcopy=False))
        samplers = optuna.samplers
        if grid:
            self.study.sampler = samplers.GridSampler(grid, seed=seed)
        elif spec.sampler == "random":
            self.study.sampler = samplers.RandomSampler(seed=seed)
        else:
            self.study.sampler = samplers.TPESampler(seed=seed)
        self.started = time.monotonic()
        self.launched_failures = 0
        self.running: set[int] = set()
        self.trial_ids: dict[int, int] = {}

    # budget -----------------------------------------------------------------------------------
    def _count(self, *states: Any) -> int:
        return len(self.study.get_trials(deepcopy=False, states=states))

    @property
    def target(self) -> int:
        return min(self.spec.trials, self.size) if self.size is not None else self.spec.trials

    def done(self) -> int:
        state = self.optuna.trial.TrialState
        return self._count(state.COMPLETE, state.PRUNED)

    def can_ask(self) -> bool:
        if self.spec.timeout is not None and time.monotonic() - self.started > self.spec.timeout:
            return False
        return self.done() + len(self.running) + self.launched_failures < self.target

    # trials -----------------------------------------------------------------------------------
    def interrupted(self) -> list[Any]:
        """Trials left RUNNING by an earlier invocation that was stopped."""
        return [t for t in self.study.get_trials(deepcopy=False) if t.state == self.optuna.trial.TrialState.RUNNING]

    def value(self, trial: Any) -> float | None:
        """A trial's objective from the values its run reported after each epoch."""
        return reduce_values(dict(trial.intermediate_values), self.spec.reduce, self.spec.direction)

    def abandon(self, trial: Any) -> None:
        """End an interrupted trial that cannot resume; the next trial is asked with its values."""
        self.study.tell(trial.number, state=self.optuna.trial.TrialState.FAIL, skip_if_finished=True)
        self.study.enqueue_trial(dict(trial.params), skip_if_exists=False)  # the abandoned trial has them

    def ask(self) -> PlannedRun:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trial = self.study.ask(self.distributions)
        return self.planned(trial.number, trial._trial_id, trial.params)  # Optuna has no public id accessor

    def planned(self, number: int, trial_id: int, params: dict[str, Any]) -> PlannedRun:
        self.running.add(number)
        self.trial_ids[number] = trial_id
        t = self.template
        values = ", ".join(f"{_short(k)}={_fmt(v)}" for k, v in params.items())
        run = PlannedRun(
            t.name,
            f"trial-{number}",
            t.seed,
            _set(t.config, params),
            deps=dict(t.deps),
            resources=t.resources,
            role="trial",
            params=dict(params),
            title=f"trial {number} ({values})",
        )
        return run

    def link(self, run: PlannedRun) -> TrialLink:
        number = int(run.label.removeprefix("trial-"))
        spec = self.spec
        return TrialLink(
            self.storage_url,
            self.name,
            self.trial_ids[number],
            number,
            spec.objective,
            spec.direction,
            spec.reduce,
            spec.pruner == "median",
            spec.startup_trials,
            spec.warmup_epochs,
        )

    def tell(self, run: PlannedRun, outcome: Outcome) -> None:
        number = int(run.label.removeprefix("trial-"))
        self.running.discard(number)
        state = self.optuna.trial.TrialState
        if outcome.status == "FINISHED" and outcome.value is not None and math.isfinite(outcome.value):
            self.study.tell(number, outcome.value, skip_if_finished=True)
        elif outcome.status == "PRUNED":
            self.study.tell(number, state=state.PRUNED, skip_if_finished=True)
        else:
            self.study.tell(number, state=state.FAIL, skip_if_finished=True)
            self.launched_failures += 1

    def abort(self) -> None:
        """Ctrl-C: the running trials stay RUNNING in the storage; the next invocation resumes them."""
        self.running.clear()

    # results ----------------------------------------------------------------------------------
    def best(self) -> Any | None:
        try:
            return self.study.best_trial
        except ValueError:
            return None

    def table(self) -> dict[str, list[Any]]:
        trials = self.study.get_trials(deepcopy=False)
        table: dict[str, list[Any]] = {"trial": [], "state": [], "value": [], "epochs": [], "run_id": []}
        for path in self.spec.space:
            table[path] = []
        for t in trials:
            table["trial"].append(t.number)
            table["state"].append(t.state.name)
            table["value"].append(t.value if t.value is not None else math.nan)
            table["epochs"].append(max(t.intermediate_values, default=0))
            table["run_id"].append(t.user_attrs.get("mlflow_run_id", ""))
            for path in self.spec.space:
                table[path].append(t.params.get(path))
        return table

    def best_config(self, run_ids: dict[str, str]) -> dict[str, Any] | None:
        best = self.best()
        if best is None:
            return None
        config = substitute(_set(self.template.config, best.params), run_ids)
        config.pop("tracking", None)
        return config

    def log(self, parent: Any, run_ids: dict[str, str], uri: str) -> list[str]:
        """Trial table, best values and config, Optuna's plots on the parent; lines to print."""
        state = self.optuna.trial.TrialState
        counts = {s.name.lower(): self._count(s) for s in (state.COMPLETE, state.PRUNED, state.FAIL)}
        parent.table("search/trials", self.table())
        parent.metrics({f"search/trials_{k}": v for k, v in counts.items()}, step=0)
        lines = [
            f"search over {', '.join(self.spec.space)}: {counts['complete']} complete, {counts['pruned']} pruned, "
            f"{counts['fail']} failed trials (Optuna study {self.name} in {self.storage_url})"
        ]
        best = self.best()
        if best is not None:
            run_id = best.user_attrs.get("mlflow_run_id", "")
            # tags and metrics, not params: MLflow params never change, and a continued search may find better
            numeric = {f"search/best/{k}": v for k, v in best.params.items() if isinstance(v, (int, float))}
            parent.metrics({"search/best_value": best.value, "search/best_trial": best.number, **numeric}, step=0)
            parent.tags(
                {
                    "kdhub.search.best_trial": str(best.number),
                    "kdhub.search.best_run": run_id,
                    **{f"search.best.{k}": str(v) for k, v in best.params.items()},
                }
            )
            config = self.best_config(run_ids)
            parent.text("search/best_config.yaml", yaml.safe_dump(config, sort_keys=False))
            for other in find_runs(
                uri,
                parent.experiment,
                f"tags.`kdhub.search.best` = 'true' and tags.mlflow.parentRunId = '{parent.run_id}'",
            ):
                if other["run_id"] != run_id:
                    set_run_state(uri, other["run_id"], remove=["kdhub.search.best"])
            if run_id:
                set_run_state(uri, run_id, tags={"kdhub.search.best": "true"})
            values = ", ".join(f"{k}={_fmt(v)}" for k, v in best.params.items())
            lines.append(
                f"best trial {best.number}: {self.spec.objective} {best.value:.4g} with {values} (run {run_id}); "
                "its config is search/best_config.yaml on the parent run"
            )
        lines += self._plots(parent)
        return lines

    def _plots(self, parent: Any) -> list[str]:
        import matplotlib

        plots = self.optuna.visualization.matplotlib
        notes = []
        for name, draw in (
            ("history", plots.plot_optimization_history),
            ("intermediate_values", plots.plot_intermediate_values),
            ("importance", plots.plot_param_importances),
        ):
            try:
                # Optuna's plots switch pyplot to its ggplot style: keep that inside
                with warnings.catch_warnings(), matplotlib.rc_context():
                    warnings.simplefilter("ignore")
                    axes = draw(self.study)
            except Exception as err:  # e.g. importance needs two complete trials
                notes.append(f"no {name} plot: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
                continue
            figure = getattr(axes, "figure", None) or axes.flat[0].figure
            figure.set_size_inches(7, 4.5)
            figure.tight_layout()
            parent.figure(f"search/{name}", figure)
        return notes


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
