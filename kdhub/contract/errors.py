"""The exceptions kdhub raises; the CLI turns each into one line and its ``exit_code`` (2 for bad input)."""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterator

EXIT_USAGE = 2
"""The exit code of bad input (argparse's too)."""


def suggest(name: str, candidates: list[str]) -> str:
    """'; did you mean ...?' with the close matches of ``name`` (empty string if none)."""
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    close += [c for c in candidates if name and name in c and c not in close][: 3 - len(close)]
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


class KdhubError(Exception):
    """Base of every user-facing kdhub error."""

    exit_code: int = EXIT_USAGE


class ConfigError(KdhubError):
    """A run or study config is invalid; the message names the YAML path (and the plugin)."""


class PluginNotFoundError(KdhubError, KeyError):
    """An unknown plugin name; the message lists the close matches."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class PluginLoadError(KdhubError):
    """A plugin failed to import or to register (fatal only with KDHUB_STRICT_PLUGINS=1)."""


class IncompatibleError(KdhubError):
    """A plugin needs something the chosen models or data cannot give (found at config time)."""


class RunFailedError(KdhubError):
    """A run started but could not finish (it is marked FAILED in MLflow with this message)."""

    exit_code = 1


class ContractError(KdhubError, TypeError, ValueError):
    """A plugin built a contract object (``DataBundle``, ``TensorSplit`` ...) with a wrong field: the message
    names the field, the expected type and the plugin."""


class DivergedError(RunFailedError):
    """A loss term or the weights became NaN or infinite; the checkpoints of earlier epochs are kept."""


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM (a scheduler's or ``kill``'s stop): handled like Ctrl-C, the run ends KILLED."""


@contextlib.contextmanager
def plugin_errors(path: str, kind: str, name: str) -> Iterator[None]:
    """Name the config path of a plugin in what its ``load()`` / ``build()`` raises.

    A KdhubError whose message starts with ``options.`` gets the path prepended
    (``student.options.pretrained: ...``); any other one is prefixed with ``path: ``. Any other
    exception becomes a one-line KdhubError naming the plugin (the original is its ``__cause__``).
    """
    try:
        yield
    except KdhubError as err:
        message = str(err)
        if message.startswith(f"{path}.") or message.startswith(f"{path}:"):
            raise
        prefixed = f"{path}.{message}" if message.startswith("options.") else f"{path}: {message}"
        try:
            renamed = type(err)(prefixed)
        except TypeError:
            renamed = KdhubError(prefixed)
        raise renamed from None
    except MemoryError:
        raise KdhubError(f"{path}: {kind} {name!r} ran out of memory (choose smaller options)") from None
    except Exception as err:
        first = (str(err).strip().splitlines() or [""])[0][:300]
        raise KdhubError(f"{path}: {kind} {name!r} failed: {type(err).__name__}: {first}") from err
