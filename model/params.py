"""Reading params.yaml sections: typed dataclasses from mappings, one coercion rule per type, and
errors that name the key, the value and what is allowed. Shared by every stage; imports nothing
from the project, so a stage that only checks its params depends on this file alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import fields, is_dataclass
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A params value of the wrong type or out of range, or an unknown key: says which and what is allowed."""


BOOL_WORDS = {
    "true": True,
    "yes": True,
    "on": True,
    "1": True,
    "false": False,
    "no": False,
    "off": False,
    "0": False,
}


def as_bool(value: Any, key: str) -> bool:
    """The one rule for booleans: true/false, 1/0, or the words in BOOL_WORDS (any case)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in BOOL_WORDS:
        return BOOL_WORDS[value.strip().lower()]
    raise ConfigError(f"{key}: {value!r} is not a boolean; use true or false")


def _coerce(default: Any, value: Any, key: str) -> Any:
    """`value` as the type of the field's default."""
    if isinstance(default, bool):
        return as_bool(value, key)
    if isinstance(default, int | float) and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ConfigError(f"{key}: {value!r} is not a number")
    if isinstance(default, int):
        if float(value) != int(value):
            raise ConfigError(f"{key}: {value!r} is not a whole number")
        return int(value)
    if isinstance(default, float):
        return float(value)
    if isinstance(default, str):
        if value is None:
            return ""
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ConfigError(f"{key}: {value!r} is not a string")
        return str(value)
    if isinstance(default, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: {value!r} is not a list")
        return tuple(value)
    return value


def from_section(cls: type[T], section: Mapping[str, Any] | None, name: str, ignore: Iterable[str] = ()) -> T:
    """The dataclass `cls` from a params section (nested dataclasses from nested mappings).

    Every value takes the type of its field's default, by one rule for each type; a key the class
    does not know is an error naming it, unless it is in `ignore` (keys read elsewhere).
    """
    section = dict(section or {})
    if not isinstance(section, dict):
        raise ConfigError(f"{name}: expected a mapping, got {section!r}")
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(section) - set(known) - set(ignore))
    if unknown:
        raise ConfigError(f"{name}: unknown params {unknown}; known: {sorted(known)}")
    defaults = cls()
    kwargs: dict[str, Any] = {}
    for key, value in section.items():
        if key not in known:
            continue
        default = getattr(defaults, key)
        if is_dataclass(default):
            kwargs[key] = from_section(type(default), value, f"{name}.{key}")
        else:
            kwargs[key] = _coerce(default, value, f"{name}.{key}")
    return cls(**kwargs)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping as {"dotted.key": leaf}."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def require(ok: bool, key: str, value: Any, allowed: str) -> None:
    """Stop with the key, the value and what is allowed unless `ok`."""
    if not ok:
        raise ConfigError(f"{key}: {value!r} is not allowed; expected {allowed}")
