"""The exceptions kdhub raises; the CLI turns each into one line and its ``exit_code`` (2 for bad input)."""

from __future__ import annotations


class KdhubError(Exception):
    """Base of every user-facing kdhub error."""

    exit_code: int = 2


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


class DivergedError(RunFailedError):
    """A loss term or the weights became NaN or infinite; the checkpoints of earlier epochs are kept."""


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM (a scheduler's or ``kill``'s stop): handled like Ctrl-C, the run ends KILLED."""
