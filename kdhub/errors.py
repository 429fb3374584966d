"""The exceptions kdhub raises for bad input; the CLI turns each into one line and exit code 2."""

from __future__ import annotations


class KdhubError(Exception):
    """Base of every user-facing kdhub error."""


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
