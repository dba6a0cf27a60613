"""The checks every config runs on its fields (``models.config``, ``attacks.config``,
``sweep.config``), and the one shape of their messages:

    <where> = <value!r>: <why>          e.g.  train.steps = 0: must be an integer >= 1
    <where>: unknown field(s) [...]; allowed: [...]

``where`` names the field as the user writes it: ``train.steps`` (a sweep file's section and
field), ``attack.n_pairs``, ``model.z_dim``. ``why`` says what the field must be, so the
message is also the fix. Every check raises ``ConfigError`` (a ``UserError``: the CLIs print it
as one line). Standard library only: ``models`` and ``attacks`` import it, and nothing here
may pull in torch.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable

from results.errors import ConfigError

__all__ = ["problem", "known_fields", "field_names", "one_of", "values_from", "integer", "number",
           "numbers", "flag",
           "is_integer", "is_number"]


def problem(where: str, value: Any, why: str) -> ConfigError:
    """The error for one bad field; ``raise problem(...)`` where no check below fits."""
    return ConfigError(f"{where} = {value!r}: {why}")


def field_names(cls: type) -> list[str]:
    """The fields of a config dataclass, the names a table of its settings may use."""
    return [f.name for f in dataclasses.fields(cls)]


def known_fields(where: str, data: Any, allowed: Iterable[str]) -> dict[str, Any]:
    """``data`` when it is a table (a dict) of settings whose keys are all in ``allowed``;
    else ConfigError naming the unknown keys and the allowed ones."""
    allowed = sorted(allowed)
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table of settings (field = value), got {data!r}")
    unknown = sorted(set(data) - set(allowed), key=str)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; allowed: {allowed}")
    return data


def one_of(where: str, value: Any, allowed: Iterable[str]) -> None:
    allowed = list(allowed)
    if value not in allowed:
        raise problem(where, value, f"must be one of {allowed}")


def values_from(where: str, values: Any, allowed: Iterable[str], *, distinct: bool = False,
                empty_ok: bool = False, also: str = "") -> None:
    """A list (or tuple) drawn from ``allowed``; non-empty unless ``empty_ok``."""
    allowed = list(allowed)
    ok = (isinstance(values, (list, tuple)) and (empty_ok or len(values) > 0)
          and all(isinstance(v, str) and v in allowed for v in values)
          and (not distinct or len(set(values)) == len(values)))
    if not ok:
        what = f"{'a' if empty_ok else 'a non-empty'} list of {'distinct ' if distinct else ''}values"
        raise problem(where, values, _with(f"must be {what} from {allowed}", also))


def integer(where: str, value: Any, minimum: int, *, also: str = "") -> None:
    """A whole number (not a bool) >= ``minimum``."""
    if not is_integer(value) or value < minimum:
        raise problem(where, value, _with(f"must be an integer >= {minimum}", also))


def number(where: str, value: Any, minimum: float, *, strict: bool = False, also: str = "") -> None:
    """A finite number (not a bool) >= ``minimum`` (> with ``strict``)."""
    if not is_number(value) or value < minimum or (strict and value == minimum):
        raise problem(where, value, _with(f"must be a number {_bound(minimum, strict)}", also))


def numbers(where: str, values: Any, minimum: float, *, integers: bool = False, strict: bool = False,
            also: str = "") -> None:
    """A non-empty list of numbers (of integers with ``integers``), each >= ``minimum``."""
    is_ok = is_integer if integers else is_number
    if (not isinstance(values, (list, tuple)) or len(values) == 0
            or not all(is_ok(v) and v >= minimum and not (strict and v == minimum) for v in values)):
        what = "integers" if integers else "numbers"
        raise problem(where, values, _with(f"must be a non-empty list of {what} {_bound(minimum, strict)}",
                                           also))


def flag(where: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise problem(where, value, "must be true or false")


def is_integer(value: Any) -> bool:
    """A whole number, not a bool (``True`` is an int to Python, never to a config)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _bound(minimum: float, strict: bool) -> str:
    return f"> {minimum:g}" if strict else f">= {minimum:g}"


def _with(why: str, also: str) -> str:
    return f"{why} {also}" if also else why
