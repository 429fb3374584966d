"""The built-in commands of ``kdhub``, registered through the ``kdhub_register_commands`` hook as any
plugin's commands are (the ``commands`` entry point of the kdhub distribution): ``kdhub`` is the first
user of its own hook. Each command is a :class:`kdhub.Command`: ``add_arguments(parser)`` and ``run(args)``.

The modules a command needs only to run (the engine, studies, the demo) are imported when it runs:
``kdhub --help`` builds every command's parser, and should start fast.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from kdhub.commands import browse, evaluate, export
from kdhub.contract.command import Command
from kdhub.contract.config_loading import apply_overrides, check_resume, load_config, parse_config
from kdhub.contract.errors import EXIT_USAGE, KdhubError
from kdhub.contract.hookspecs import hookimpl
from kdhub.registry.loading import get_registry, load_failures, loaded_plugins
from kdhub.registry.reference import show_text
from kdhub.registry.resolve import resolve_plugins
from kdhub.tracking import check_reference, check_resumable, load_run_config, running_runs, uri_problem

__all__ = [
    "BUILTIN_COMMANDS",
    "EXIT_USAGE",
    "DemoCommand",
    "EvaluateCommand",
    "ExportCommand",
    "ListCommand",
    "PluginsCommand",
    "RunCommand",
    "RunsCommand",
    "ShowCommand",
    "StudyCommand",
    "prepare_run",
]


def _warn_load_failures() -> None:
    """One line per plugin that failed to load (``kdhub plugins`` tells why)."""
    for failure in load_failures():
        print(
            f"kdhub: warning: plugin {failure.entry_point!r} from {failure.distribution} failed to load "
            f"({failure.error.splitlines()[0][:160]}); `kdhub plugins` for details",
            file=sys.stderr,
        )


def prepare_run(config_file: str | None, overrides: list[str], resume: str | None, uri: str | None) -> Any:
    """The validated RunConfig of ``kdhub run``, checked before any data is loaded or run started.

    With ``resume``, the run must exist, not be deleted or FINISHED, and a config (file or
    ``--set``) may change only the resumable keys (:data:`kdhub.contract.config_loading.RESUMABLE`).
    """
    if uri is not None:
        problem = uri_problem(uri)
        if problem:
            raise KdhubError(f"--tracking-uri: {problem}")
    if not config_file and not resume:
        raise KdhubError("run: give a CONFIG file, or --resume RUN_ID")
    config = load_config(config_file, overrides) if config_file else None
    if config is not None and uri:
        config.tracking.uri = uri
    if resume:
        store = uri or (config.tracking.uri if config is not None else None)
        check_resumable(resume, store)
        logged = load_run_config(resume, store)
        if config is None:
            config = parse_config(apply_overrides(logged, overrides), "resumed run")
            if uri:
                config.tracking.uri = uri
        check_resume(config, logged, resume)
    if config is None:  # unreachable: a config file or --resume was given
        raise KdhubError("run: give a CONFIG file, or --resume RUN_ID")
    resolve_plugins(config, get_registry())
    if config.teacher is not None and config.teacher.weights:
        check_reference(config.teacher.weights, config.tracking.uri, "teacher.weights")
    return config


class RunCommand(Command):
    """Train one run from a YAML config (``kdhub run CONFIG``), resume one, or check it (``--dry-run``)."""

    name = "run"
    help = "train one run from a YAML config"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("config", nargs="?", help="run config (YAML); optional with --resume")
        p.add_argument("--set", action="append", default=[], metavar="PATH=VALUE", help="override a config value")
        p.add_argument("--resume", metavar="RUN_ID", help="continue an interrupted run from its last checkpoint")
        p.add_argument(
            "--dry-run",
            action="store_true",
            help="validate the config, build every plugin, print the resolved plan (policy values included), "
            "train nothing",
        )
        p.add_argument(
            "--tracking-uri", help="MLflow tracking URI (default: config, $MLFLOW_TRACKING_URI, sqlite:///mlflow.db)"
        )

    def run(self, args: argparse.Namespace) -> int:
        # deferred: `kdhub --help` imports every command
        from kdhub.engine.runner import run

        get_registry()
        _warn_load_failures()
        config = prepare_run(args.config, args.set, args.resume, args.tracking_uri)
        if args.dry_run:
            # deferred: `kdhub --help` imports every command
            from kdhub.commands.dryrun import describe_run, format_plan

            print(format_plan(describe_run(config)), end="")
            return 0
        result = run(config, resume_run_id=args.resume, announce=True)
        if result.run_id is not None:  # only the logging process (rank 0) reports
            print(f"run {result.run_id}: test accuracy last {result.last_acc:.2f}%, best {result.best_acc:.2f}%")
        return 0


class RunsCommand(Command):
    """The RUNNING runs in the store, and whether their process is alive or gone."""

    name = "runs"
    help = "the RUNNING runs, and whether their process is alive or gone (stale)"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--stale", action="store_true", help="only the runs whose process is gone (killed, machine lost)"
        )
        p.add_argument(
            "--status", metavar="STATES", help="runs in these states instead, newest first: killed,failed (or all)"
        )
        p.add_argument("--experiment", help="only this MLflow experiment (default: all)")
        p.add_argument(
            "--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)"
        )

    def run(self, args: argparse.Namespace) -> int:
        if args.status:  # KILLED, FAILED ... runs with their resume commands (kdhub.tracking.listing)
            from kdhub.tracking.listing import parse_statuses, run_lines, runs_with_status

            found = runs_with_status(args.tracking_uri, args.experiment, parse_statuses(args.status))
            print("\n".join(run_lines(found)) if found else f"no {args.status} run")
            return 0

        runs = [r for r in running_runs(args.tracking_uri, args.experiment) if not (args.stale and r["alive"])]
        if not runs:
            print("no stale run: every RUNNING run's process is alive" if args.stale else "no RUNNING run")
            return 0
        for run in runs:
            state = "alive" if run["alive"] else f"stale; resume: kdhub run --resume {run['run_id']}"
            print(f"{run['run_id']}  {run['name']}  ({run['why']})  {state}")
        return 0


class PluginsCommand(Command):
    """The installed plugins, what each registers, and why any failed to load (exit code 1 then)."""

    name = "plugins"
    help = "list the installed plugins, what they register and load errors"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true", help="machine-readable output")

    def run(self, args: argparse.Namespace) -> int:
        infos, failures = loaded_plugins(), load_failures()
        if args.json:
            payload = {
                "plugins": [
                    {
                        "name": i.name,
                        "distribution": i.distribution,
                        "version": i.version,
                        "module": i.module,
                        "registers": i.registered,
                        "hooks": i.hooks,
                    }
                    for i in infos
                ],
                "errors": [
                    {"distribution": f.distribution, "entry_point": f.entry_point, "error": f.error} for f in failures
                ],
            }
            print(json.dumps(payload, indent=2))
            return 1 if failures else 0
        for info in infos:
            print(f"{info.distribution} {info.version}  [{info.name} = {info.module}]")
            for kind, names in info.registered.items():
                print(f"  {kind}: {', '.join(names)}")
            if info.hooks:
                print(f"  hooks: {', '.join(h.removeprefix('kdhub_') for h in info.hooks)}")
            if not info.registered and not info.hooks:
                print("  (registers nothing and implements no hook)")
        for failure in failures:
            print(f"FAILED {failure.distribution} [{failure.entry_point}]: {failure.error}")
        return 1 if failures else 0


class ListCommand(Command):
    """The plugins of a kind whose names match a glob, with their summaries."""

    name = "list"
    help = "list the plugins of a kind"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        browse.list_arguments(p)

    def run(self, args: argparse.Namespace) -> int:
        registry = get_registry()
        for entry in registry.entries(args.kind):
            if entry.name in registry.names(args.kind, args.pattern):
                print(browse.list_line(entry.name, entry.cls.summary()))
        return 0


class ShowCommand(Command):
    """A plugin's documentation, capabilities and options."""

    name = "show"
    help = "a plugin's documentation and options"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        browse.show_arguments(p)

    def run(self, args: argparse.Namespace) -> int:
        print(show_text(args.kind, get_registry().entry(args.kind, args.name)), end="")
        return 0


class StudyCommand(Command):
    """Run a study file (or continue it), check it (``--dry-run``) or print its state (``--status``)."""

    name = "study"
    help = "run a study: runs, grids and seeds as nested MLflow runs"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("study", help="study file (YAML)")
        p.add_argument(
            "--set", action="append", default=[], metavar="PATH=VALUE", help="override a value of the base config"
        )
        p.add_argument("--dry-run", action="store_true", help="check the study and list its runs without training")
        p.add_argument("--status", action="store_true", help="print the runs and their states; run nothing")
        p.add_argument("--tracking-uri", help="MLflow tracking URI (a tracking server for a Ray cluster)")
        p.add_argument(
            "--executor",
            choices=["local", "ray"],
            default="local",
            help="local: one run at a time here; ray: Ray tasks",
        )
        p.add_argument("--parallel", type=int, metavar="N", help="ray: runs at a time (a local instance gets N x cpus)")
        p.add_argument("--address", metavar="ADDR", help="ray: join this cluster (e.g. ray://head:10001 or auto)")
        p.add_argument("--fresh", action="store_true", help="start the study over under a new parent run")

    def run(self, args: argparse.Namespace) -> int:
        # deferred: `kdhub --help` imports every command
        from kdhub.study import expand, load_study, run_study, study_status

        study = load_study(args.study, args.set)
        from kdhub.study.checks import check_study_options  # --address, search.objective and .storage

        check_study_options(study, args.executor, args.address)
        if args.dry_run:
            plan = expand(study)
            names = {r.key: r.display for r in plan}
            for run in plan:
                after = ", ".join(dict.fromkeys(names[k] for k in run.deps.values()))
                print(
                    f"{run.name}{f'[{run.label}]' if run.label else ''}  seed {run.seed}"
                    + (f"  after {after}" if after else "")
                )
            if study.search is not None:
                spec = study.search
                pruning = "median pruning" if spec.pruner == "median" else "no pruning"
                print(
                    f"search {spec.run}: {spec.trials} trials over {', '.join(spec.space)} "
                    f"({spec.sampler} sampler, {pruning}, {spec.direction} {spec.objective})"
                )
                # deferred: `kdhub --help` imports every command
                from kdhub.study.plan import search_notes, search_template

                for note in search_notes(study, search_template(study, plan)):
                    print(note)
            return 0
        if args.status:
            return _print_status(study_status(study, args.tracking_uri), study.name)
        result = run_study(
            study,
            args.tracking_uri,
            executor=args.executor,
            parallel=args.parallel,
            address=args.address,
            fresh=args.fresh,
        )
        _print_study(result)
        failures = result["failures"]
        if not failures:
            return 0
        return EXIT_USAGE if any(bad_input for _, _, bad_input in failures) else 1


class DemoCommand(Command):
    """A teacher, a vanilla student and a KD student on the embedded digits data, in about a minute."""

    name = "demo"
    help = "teacher, vanilla student and KD student on the embedded digits data"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the demo's own)")
        p.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///mlflow.db)")

    def run(self, args: argparse.Namespace) -> int:
        # deferred: `kdhub --help` imports every command
        from kdhub.commands.demo import demo

        demo(epochs=args.epochs, tracking_uri=args.tracking_uri)
        return 0


def _print_study(result: dict[str, Any]) -> None:
    def cell(mean: float, std: float) -> str:
        if not math.isfinite(mean):
            return "-"
        return f"{mean:.2f} ± {std:.2f}" if math.isfinite(std) else f"{mean:.2f}"

    table = result["aggregate"]
    if table["point"]:
        width = max(len(p) for p in [*table["point"], "test accuracy (%)"]) + 2
        print(f"\n{'test accuracy (%)':<{width}}{'best':<16}{'last':<16}{'at best val':<16}seeds")
        for i, point in enumerate(table["point"]):
            cells = [cell(table[f"{s}_mean"][i], table[f"{s}_std"][i]) for s in ("best", "last", "at_best_val")]
            print(f"{point:<{width}}{cells[0]:<16}{cells[1]:<16}{cells[2]:<16}{table['seeds'][i]}")
    for label, comparison in result.get("comparisons", {}).items():
        print(f"\ncomparison {label} (MLflow run {comparison.run_id}):\n{comparison.report()}")
    states = result["summary"]["state"]
    print(
        f"\n{states.count('finished')} of {len(states)} runs finished; parent run {result['parent_run_id']}"
        + (f"; {len(result['failures'])} did not:" if result["failures"] else "")
    )
    for what, reason, _ in result["failures"]:
        print(f"  {what}: {reason}")
    if result["failures"]:
        print("rerun the same command to retry them (finished runs are kept)")


def _print_status(status: dict[str, Any], name: str) -> int:
    parent = status["parent"]
    if parent is None:
        print(f"study {name}: not started in {status['uri']}")
    else:
        print(f"study {name}: parent run {parent['run_id']} ({parent['status']}) in {status['uri']}")
    rows = status["rows"]
    width = max(len(r["run"]) for r in rows) + 2
    for row in rows:
        acc = f"test {row['test_acc_last']:.2f}%" if math.isfinite(row["test_acc_last"]) else ""
        line = f"  {row['run']:<{width}}{row['state']:<12}{row['run_id'] or '-':<34}{acc}"
        if row["reason"] and row["state"] in ("failed", "interrupted"):
            line += f"  {row['reason'][:120]}"
        print(line.rstrip())
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    print("  " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    trials = status["trials"]
    if trials is not None:
        text = ", ".join(f"{v} {k}" for k, v in trials["counts"].items()) or "none yet"
        best = trials["best"]
        print(f"  search trials: {text}" + (f"; best trial {best[1]}: {best[0]:.4g}" if best else ""))
    return 0


class ExportCommand(Command):
    """Write a trained student as safetensors, ONNX or TorchScript, checked against PyTorch."""

    name = "export"
    help = "write a trained student as safetensors, ONNX or TorchScript (checked against PyTorch)"
    description = "Export a student checkpoint; every format takes normalised float32 images [N, C, H, W]."

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        export.add_arguments(p)

    def run(self, args: argparse.Namespace) -> int:
        return export.cmd_export(args)


class EvaluateCommand(Command):
    """Overall and per-class accuracy of a student checkpoint on a dataset split (optionally logged)."""

    name = "evaluate"
    help = "overall and per-class accuracy of a student checkpoint on a dataset of the same classes"
    description = "Evaluate a checkpoint (run id, file, runs:/ or models:/ reference) on a dataset split."

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        evaluate.add_arguments(p)

    def run(self, args: argparse.Namespace) -> int:
        return evaluate.cmd_evaluate(args)


BUILTIN_COMMANDS: tuple[type[Command], ...] = (
    RunCommand,
    RunsCommand,
    PluginsCommand,
    ListCommand,
    ShowCommand,
    StudyCommand,
    DemoCommand,
    ExportCommand,
    EvaluateCommand,
)
"""In the order ``kdhub --help`` lists them (plugins' commands follow)."""


@hookimpl
def kdhub_register_commands(register: Any) -> None:
    for cls in BUILTIN_COMMANDS:
        register(cls)
