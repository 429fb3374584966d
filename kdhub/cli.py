"""The ``kdhub`` command: run configs and studies, look plugins up, run the demo; plugins add more commands."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from kdhub.errors import KdhubError

EXIT_USAGE = 2


def _registry() -> Any:
    from kdhub.plugins import get_registry

    return get_registry()


def cmd_run(args: argparse.Namespace) -> int:
    from kdhub.config import load_config, parse_config
    from kdhub.engine.loop import run

    if args.config:
        config = load_config(args.config, args.set)
    elif args.resume:
        from kdhub.config import apply_overrides
        from kdhub.tracking import load_run_config

        config = parse_config(apply_overrides(load_run_config(args.resume, args.tracking_uri), args.set), "resumed run")
    else:
        raise KdhubError("run: give a CONFIG file, or --resume RUN_ID")
    if args.tracking_uri:
        config.tracking.uri = args.tracking_uri
    if args.dry_run:
        from kdhub.dryrun import describe_run, format_plan

        print(format_plan(describe_run(config)), end="")
        return 0
    result = run(config, resume_run_id=args.resume)
    if result.run_id is not None:  # only the logging process (rank 0) reports
        print(f"run {result.run_id}: test accuracy last {result.last_acc:.2f}%, best {result.best_acc:.2f}%")
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
                }
                for i in infos
            ],
            "errors": [
                {"distribution": f.distribution, "entry_point": f.entry_point, "error": f.error} for f in failures
            ],
        }
        print(json.dumps(payload, indent=2))
        return 0
    for info in infos:
        print(f"{info.distribution} {info.version}  [{info.name} = {info.module}]")
        for kind, names in info.registered.items():
            print(f"  {kind}: {', '.join(names)}")
    for failure in failures:
        print(f"FAILED {failure.distribution} [{failure.entry_point}]: {failure.error}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    registry = _registry()
    for entry in registry.entries(args.kind):
        if entry.name in registry.names(args.kind, args.pattern):
            print(f"{entry.name:<22} {entry.cls.summary()}")
    return 0


def _type_text(annotation: Any) -> str:
    import types
    from typing import Annotated, Literal, Union, get_args, get_origin

    origin = get_origin(annotation)
    if origin is Literal:
        return " | ".join(str(a) for a in get_args(annotation))
    if origin is Annotated:
        return _type_text(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return " | ".join(_type_text(a) for a in get_args(annotation))
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def option_rows(options_model: type) -> list[tuple[str, str, str, str, str]]:
    """(name, type, default, bounds, description) for every field of a pydantic options model."""
    rows = []
    for name, field in options_model.model_fields.items():
        annotation = _type_text(field.annotation)
        default = "required" if field.is_required() else repr(field.get_default(call_default_factory=True))
        bounds = []
        for meta in field.metadata:
            for attr, symbol in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="), ("min_length", "len >=")):
                value = getattr(meta, attr, None)
                if value is not None:
                    bounds.append(f"{symbol} {value}")
        rows.append((name, annotation, default, ", ".join(bounds), field.description or ""))
    return rows


def cmd_show(args: argparse.Namespace) -> int:
    entry = _registry().entry(args.kind, args.name)
    cls = entry.cls
    print(f"{args.kind} {entry.name}  (from {entry.origin}, {cls.__module__}.{cls.__name__})\n")
    print((cls.__doc__ or "").strip().replace("\n    ", "\n"))
    facts = []
    for attr in (
        "per_sample",
        "output_based",
        "feature_roles",
        "needs_teacher",
        "default_weight",
        "wants_class_losses",
    ):
        if hasattr(cls, attr):
            facts.append(f"{attr}={getattr(cls, attr)!r}")
    if facts:
        print("\n" + "  ".join(facts))
    rows = option_rows(cls.Options)
    print("\noptions:" if rows else "\noptions: none")
    widths = [max(len(r[i]) for r in rows) for i in range(4)] if rows else []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)]
        print(f"  {cells[0]}  {cells[1]}  default {cells[2]}  {cells[3]}  {row[4]}")
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from kdhub.study import expand, load_study, run_study

    study = load_study(args.study, args.set)
    if args.dry_run:
        for name, label, seed, _ in expand(study):
            print(f"{name}{f'[{label}]' if label else ''}  seed {seed}")
        return 0
    result = run_study(study, args.tracking_uri)
    summary = result["summary"]
    print(f"study {study.name}: parent run {result['parent_run_id']}")
    for i, name in enumerate(summary["run"]):
        grid = f"[{summary['grid'][i]}]" if summary["grid"][i] else ""
        last, run_id = summary["test_acc_last"][i], summary["run_id"][i]
        print(f"  {name}{grid} seed {summary['seed'][i]}: last {last:.2f}%  ({run_id})")
    for label, comparison in result.get("comparisons", {}).items():
        print(f"\ncomparison {label} (MLflow run {comparison.run_id}):\n{comparison.report()}")
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
    p.add_argument("--dry-run", action="store_true", help="list the runs without training")
    p.add_argument("--tracking-uri", help="MLflow tracking URI")
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("demo", help="teacher, vanilla student and KD student on the embedded digits data")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the demo's own)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///mlflow.db)")
    p.set_defaults(func=cmd_demo)

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
        args = build_parser().parse_args(argv)  # loads the plugins: they may add commands
        return args.func(args)
    except KdhubError as err:
        message = str(err)
        print(f"kdhub: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("kdhub: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
