"""What every plugin shares: a name, a pydantic ``Options`` model and a docstring."""

from __future__ import annotations

import math
import types
from abc import ABC
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

from pydantic import (
    AllowInfNan,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WrapValidator,
    field_validator,
)

__all__ = ["EpochOrFraction", "FiniteFloat", "Options", "Plugin", "StrictModel", "resolve_epoch"]

FiniteFloat = Annotated[float, AllowInfNan(False)]
"""A float that refuses NaN and ±inf (``.nan``, ``.inf`` in YAML): use it for every float option."""


def _number_kinds(annotation: Any) -> set[type]:
    """The scalar types an annotation admits (``Annotated`` / ``Optional`` / unions unwrapped)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _number_kinds(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return set().union(*(_number_kinds(a) for a in get_args(annotation)))
    if origin is Literal:
        return {type(a) for a in get_args(annotation)}
    if annotation is Any:
        return {object}
    return {annotation} if isinstance(annotation, type) else set()


def _element_annotation(annotation: Any) -> Any:
    """The element type of ``list[X]`` / ``tuple[X, ...]`` / ``set[X]`` (None for anything else)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _element_annotation(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        inner = [_element_annotation(a) for a in get_args(annotation) if a is not type(None)]
        return inner[0] if len(inner) == 1 else None
    if origin in (list, set, frozenset, tuple):
        args = [a for a in get_args(annotation) if a is not Ellipsis]
        return args[0] if len(set(map(repr, args))) == 1 else None
    return None


def _is_numeric_only(annotation: Any) -> bool:
    """True when the annotation takes numbers but not booleans (``True`` would silently become 1)."""
    kinds = _number_kinds(annotation)
    return bool(kinds & {int, float}) and not kinds & {bool, object, str}


def _bool_for_number(annotation: Any, value: Any, where: str = "") -> str | None:
    """Why ``value`` (or an item of it, in nested lists) is a boolean where ``annotation`` wants a number."""
    if isinstance(value, bool):
        if _is_numeric_only(annotation):
            return f"{where}expected a number, got a boolean ({str(value).lower()})"
        return None
    if isinstance(value, (list, tuple)):
        element = _element_annotation(annotation)
        if element is not None:
            for i, item in enumerate(value):
                problem = _bool_for_number(element, item, f"{where}item {i}: ")
                if problem:
                    return problem
    return None


class StrictModel(BaseModel):
    """Unknown keys are errors, floats are finite, and a boolean is never taken for a number.

    Pydantic's lax mode turns ``epochs: true`` into 1 and accepts ``lr: .nan``; every kdhub config
    section and every plugin's :class:`Options` refuses both.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_number(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if field is not None:
            problem = _bool_for_number(field.annotation, value)
            if problem:
                raise ValueError(problem)
        return value


class Options(StrictModel):
    """Base of every plugin's options: unknown keys are errors, values are immutable, floats finite.

    NaN and infinities are refused for every float field (also in third-party plugins); booleans are
    refused where a number is expected.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _epoch_or_fraction(value: Any, handler: Any) -> Any:
    """One message for the int-or-fraction union (instead of one per union branch)."""
    if isinstance(value, bool):
        raise ValueError(f"expected an epoch count or a fraction of the run, got a boolean ({str(value).lower()})")
    try:
        return handler(value)
    except ValidationError:
        shown = "NaN" if isinstance(value, float) and math.isnan(value) else repr(value)
        raise ValueError(
            f"expected an epoch count (integer 0 .. {MAX_EPOCH:,}) or a fraction of the run (0 < x < 1), got {shown}"
        ) from None


MAX_EPOCH = 100_000

EpochOrFraction = Annotated[
    Union[Annotated[int, Field(ge=0, le=MAX_EPOCH)], Annotated[float, Field(gt=0, lt=1)]],
    WrapValidator(_epoch_or_fraction),
    Field(description="an epoch count (int 0 .. 100,000) or a fraction of the run (0 < float < 1)"),
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
