"""The version of kdhub: the one source (``pyproject.toml`` reads it; ``kdhub.__version__`` shows it)."""

__version__ = "0.1.0"
