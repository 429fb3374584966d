"""What every plugin shares: a name, a pydantic ``Options`` model and a docstring."""

from __future__ import annotations

import math
from abc import ABC
from typing import Annotated, Any, ClassVar, Union

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt

__all__ = ["EpochOrFraction", "Options", "Plugin", "resolve_epoch"]


class Options(BaseModel):
    """Base of every plugin's options: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


EpochOrFraction = Annotated[
    Union[NonNegativeInt, Annotated[float, Field(gt=0, lt=1)]],
    Field(description="an epoch count (int >= 0) or a fraction of the run (0 < float < 1)"),
]
"""An epoch count or a fraction of the run, resolved once at run start by :func:`resolve_epoch`."""


def resolve_epoch(value: int | float, total: int, minimum: int = 0) -> int:
    """Turn an :data:`EpochOrFraction` into an epoch count: fractions are rounded to the nearest epoch."""
    count = math.floor(value * total + 0.5) if isinstance(value, float) and not value.is_integer() else int(value)
    return max(minimum, count)


_OptionsModel = Options  # the class below names its own options model ``Options``


class Plugin(ABC):  # noqa: B024 - each kind's base class declares the abstract methods
    """Base of every plugin class.

    Subclasses set ``name`` (the registry key) and may replace ``Options`` with their own
    pydantic model; the class docstring is what ``kdhub show`` prints. ``kind`` is set once by
    each kind's base class (``"method"``, ``"policy"`` ...): the registry's list of kinds.
    Methods marked abstract by a kind's base class must be implemented, or registering the
    class fails with their names.
    """

    kind: ClassVar[str] = ""
    CAPABILITIES: ClassVar[tuple[str, ...]] = ()
    """Names of the capabilities ``kdhub show`` prints (each kind's base class lists its own)."""
    name: ClassVar[str] = ""
    Options: ClassVar[type[Options]] = Options

    def __init__(self, options: _OptionsModel | None = None, **kwargs: Any) -> None:
        if options is None:
            options = self.Options(**kwargs)
        elif kwargs:
            raise TypeError("pass either an Options instance or keyword options, not both")
        self.options = options

    @classmethod
    def summary(cls) -> str:
        """The first line of the docstring."""
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.model_dump().items())
        return f"{type(self).__name__}({opts})"
