"""Optuna, and where a search keeps its trials: the storage (``optuna.db`` beside a local MLflow store)
and the pruner, shared by the search (:mod:`kdhub.study.search`) and the trial runs (:mod:`kdhub.study.worker`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdhub.contract.errors import KdhubError

__all__ = ["default_storage", "import_optuna", "open_storage", "pruner"]


def import_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise KdhubError(
            "a study with search: needs Optuna, which is not installed: pip install 'kdhub[search]'"
        ) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def default_storage(tracking_uri: str) -> str:
    """``optuna.db`` in the folder of a local MLflow store, else in the current folder."""
    if tracking_uri.startswith("sqlite:///"):
        folder = Path(tracking_uri[len("sqlite:///") :].split("?")[0]).parent
    elif tracking_uri.startswith("file:"):
        from urllib.parse import urlparse

        folder = Path(urlparse(tracking_uri).path).parent
    elif "://" not in tracking_uri:
        folder = Path(tracking_uri).parent
    else:
        folder = Path.cwd()
    return f"sqlite:///{(folder / 'optuna.db').resolve()}"


def open_storage(url: str) -> Any:
    optuna = import_optuna()
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite:") else None
    return optuna.storages.RDBStorage(url, engine_kwargs=engine)


def pruner(prune: bool, startup_trials: int, warmup_epochs: int) -> Any:
    optuna = import_optuna()
    if not prune:
        return optuna.pruners.NopPruner()
    # steps are epochs (1, 2, ...); Optuna prunes from step n_warmup_steps on
    return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=warmup_epochs + 1)
