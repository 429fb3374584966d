"""The ``kdhub`` command: run configs and studies, look plugins up, run the demo, export and evaluate students;
plugins add more commands (``kdhub compare``)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import Any

from kdhub import evaluate, export
from kdhub.errors import KdhubError, Terminated

EXIT_USAGE = 2


def _registry() -> Any:
    from kdhub.plugins import get_registry

    return get_registry()


def _warn_load_failures() -> None:
    """One line per plugin that failed to load (``kdhub plugins`` tells why)."""
    from kdhub.plugins import load_failures

    for failure in load_failures():
        print(
            f"kdhub: warning: plugin {failure.entry_point!r} from {failure.distribution} failed to load "
            f"({failure.error.splitlines()[0][:160]}); `kdhub plugins` for details",
            file=sys.stderr,
        )


def prepare_run(config_file: str | None, overrides: list[str], resume: str | None, uri: str | None) -> Any:
    """The validated RunConfig of ``kdhub run``, checked before any data is loaded or run started.

    With ``resume``, the run must exist, not be deleted or FINISHED, and a config (file or
    ``--set``) may change only the resumable keys (:data:`kdhub.config.RESUMABLE`).
    """
    from kdhub.config import apply_overrides, check_resume, load_config, parse_config, resolve_plugins
    from kdhub.tracking import check_reference, check_resumable, load_run_config, uri_problem

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
    resolve_plugins(config, _registry())
    if config.teacher is not None and config.teacher.weights:
        check_reference(config.teacher.weights, config.tracking.uri, "teacher.weights")
    return config


def cmd_run(args: argparse.Namespace) -> int:
    from kdhub.engine.runner import run

    _registry()
    _warn_load_failures()
    config = prepare_run(args.config, args.set, args.resume, args.tracking_uri)
    if args.dry_run:
        from kdhub.dryrun import describe_run, format_plan

        print(format_plan(describe_run(config)), end="")
        return 0
    result = run(config, resume_run_id=args.resume, announce=True)
    if result.run_id is not None:  # only the logging process (rank 0) reports
        print(f"run {result.run_id}: test accuracy last {result.last_acc:.2f}%, best {result.best_acc:.2f}%")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from kdhub.tracking import running_runs

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


def cmd_plugins(args: argparse.Namespace) -> int:
    from kdhub.plugins import load_failures, loaded_plugins

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


def cmd_list(args: argparse.Namespace) -> int:
    registry = _registry()
    for entry in registry.entries(args.kind):
        if entry.name in registry.names(args.kind, args.pattern):
            print(f"{entry.name:<22} {entry.cls.summary()}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from kdhub.reference import capabilities, option_rows

    entry = _registry().entry(args.kind, args.name)
    cls = entry.cls
    print(f"{args.kind} {entry.name}  (from {entry.origin}, {cls.__module__}.{cls.__name__})\n")
    print((cls.__doc__ or "").strip().replace("\n    ", "\n"))
    facts = capabilities(cls)
    if facts:
        print("\n" + "  ".join(f"{k}={v!r}" for k, v in facts.items()))
    rows = [(r.name, r.type, r.default, r.bounds, r.description) for r in option_rows(cls.Options)]
    print("\noptions:" if rows else "\noptions: none")
    widths = [max(len(r[i]) for r in rows) for i in range(4)] if rows else []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)]
        print(f"  {cells[0]}  {cells[1]}  default {cells[2]}  {cells[3]}  {row[4]}")
    return 0


def cmd_study(args: argparse.Namespace) -> int:
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
            from kdhub.study.spec import search_notes, search_template

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


def _print_study(result: dict[str, Any]) -> None:
    import math

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
    import math

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


def cmd_demo(args: argparse.Namespace) -> int:
    from kdhub.demo import demo

    demo(epochs=args.epochs, tracking_uri=args.tracking_uri)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdhub", description="knowledge-distillation workbench")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="train one run from a YAML config")
    p.add_argument("config", nargs="?", help="run config (YAML); optional with --resume")
    p.add_argument("--set", action="append", default=[], metavar="PATH=VALUE", help="override a config value")
    p.add_argument("--resume", metavar="RUN_ID", help="continue an interrupted run from its last checkpoint")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="validate the config, build every plugin, print the resolved plan (policy values included), train nothing",
    )
    p.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: config, $MLFLOW_TRACKING_URI, sqlite:///mlflow.db)"
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("runs", help="the RUNNING runs, and whether their process is alive or gone (stale)")
    p.add_argument("--stale", action="store_true", help="only the runs whose process is gone (killed, machine lost)")
    p.add_argument(
        "--status", metavar="STATES", help="runs in these states instead, newest first: killed,failed (or all)"
    )
    p.add_argument("--experiment", help="only this MLflow experiment (default: all)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("plugins", help="list the installed plugins, what they register and load errors")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("list", help="list the plugins of a kind")
    p.add_argument("kind", help="method, policy, metric, model or dataset")
    p.add_argument("pattern", nargs="?", default="*", help="glob, e.g. '*kd*'")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("show", help="a plugin's documentation and options")
    p.add_argument("kind")
    p.add_argument("name")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("study", help="run a study: runs, grids and seeds as nested MLflow runs")
    p.add_argument("study", help="study file (YAML)")
    p.add_argument(
        "--set", action="append", default=[], metavar="PATH=VALUE", help="override a value of the base config"
    )
    p.add_argument("--dry-run", action="store_true", help="check the study and list its runs without training")
    p.add_argument("--status", action="store_true", help="print the runs and their states; run nothing")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (a tracking server for a Ray cluster)")
    p.add_argument(
        "--executor", choices=["local", "ray"], default="local", help="local: one run at a time here; ray: Ray tasks"
    )
    p.add_argument("--parallel", type=int, metavar="N", help="ray: runs at a time (a local instance gets N x cpus)")
    p.add_argument("--address", metavar="ADDR", help="ray: join this cluster (e.g. ray://head:10001 or auto)")
    p.add_argument("--fresh", action="store_true", help="start the study over under a new parent run")
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("demo", help="teacher, vanilla student and KD student on the embedded digits data")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the demo's own)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///mlflow.db)")
    p.set_defaults(func=cmd_demo)

    export.add_parser(sub)
    evaluate.add_parser(sub)
    _add_plugin_commands(sub)
    return parser


def _add_plugin_commands(sub: Any) -> None:
    """A subcommand for every registered command plugin (``kdhub compare`` ...); built-in names win."""
    taken = set(sub.choices)
    for entry in _registry().entries("command"):
        if entry.name in taken:
            print(
                f"kdhub: warning: command {entry.name!r} from {entry.origin} clashes with a built-in command; skipped",
                file=sys.stderr,
            )
            continue
        command = entry.cls()
        p = sub.add_parser(entry.name, help=entry.cls.help or entry.cls.summary())
        command.add_arguments(p)
        p.set_defaults(func=command.run)


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            args = build_parser().parse_args(argv)  # loads the plugins: they may add commands
            code = args.func(args)
            sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at interpreter exit
            return code
        except KdhubError as err:
            print(f"kdhub: error: {err}", file=sys.stderr)
            return err.exit_code
        except Terminated as stopped:
            from kdhub.tracking.failures import interrupted_line

            print(f"kdhub: {interrupted_line(stopped)}", file=sys.stderr)
            return 143
        except KeyboardInterrupt:
            print("kdhub: interrupted", file=sys.stderr)
            return 130
    except BrokenPipeError:
        # the reader (``| head``) went away: stop quietly, and keep Python from complaining at exit
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
