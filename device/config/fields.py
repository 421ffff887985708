"""The small engine under the config: a setting is a dataclass field whose metadata holds its
default, bounds, choices and description; the field's annotation holds its type.

A section is a frozen dataclass deriving from :class:`Section`, every field made with
:func:`setting` (a value) or :func:`section` (a nested section). :func:`build` turns a parsed
YAML mapping into such an instance, refusing unknown keys, wrong types and out-of-range values
with one line naming the key path (``mqtt.port: must be 1..65535, got 70000``). The same
metadata feeds the doc generators (device.config.docs) and :func:`setting_problems`, which
classes built on a section (``FeatureParams``) use to check themselves: one set of bounds.

Annotations are read as objects (this module and the section modules do not use
``from __future__ import annotations``): ``float``, ``str | None``, ``list[float]``,
``dict[str, float]``, ``list[SomeSection]``.
"""

import copy
import dataclasses
import math
import types
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast, get_args, get_origin

T = TypeVar("T")
S = TypeVar("S", bound="Section")

KEY = "callwatch.setting"
"""Field metadata key under which a setting's :class:`Key` lives."""


class ConfigError(Exception):
    """A config problem; str() is one line naming the key path and what was expected."""


@dataclass(frozen=True)
class Key:
    """One setting: its default, what it is, and the values it accepts."""

    default: Any
    doc: str
    types: tuple = ()
    """Accepted Python types (from the field's annotation)."""
    min: float | None = None
    """Smallest number; for a string, its shortest length (1: must not be empty)."""
    max: float | None = None
    choices: tuple = ()
    nullable: bool = False
    item: Any = None
    """For lists and mappings: the type of each item, or a Section class for lists of mappings."""


def setting(
    default: T,
    *,
    doc: str,
    minimum: float | None = None,
    maximum: float | None = None,
    choices: tuple = (),
) -> T:
    """A dataclass field for one config setting (a list or dict default is copied per instance)."""
    key = Key(default=default, doc=doc, min=minimum, max=maximum, choices=tuple(choices))
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={KEY: key})
    result: T = field(default=default, metadata={KEY: key})
    return result


def section(cls: type[S]) -> S:
    """A dataclass field holding a nested section, by default all its defaults."""
    result: S = field(default_factory=cls)
    return result


class Section:
    """Base of every config section: a frozen dataclass of settings and nested sections.

    Read settings as attributes (``cfg.mqtt.port``; mypy knows each one's type); a misspelt one
    raises AttributeError naming the key path. ``name in section`` tells whether the section has
    that key and ``section[name]`` reads one by name.
    """

    _section_path = ""
    """Dotted path of this section in config.yaml (set by :func:`set_paths`)."""

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain YAML-able values (nested sections as mappings)."""
        return {
            f.name: _plain(getattr(self, f.name))
            for f in _fields(self)
            if KEY in f.metadata or _is_section(f.type)
        }

    # The sections' dataclasses generate neither __eq__ nor __repr__ (eq=False, repr=False):
    # these two serve them all, and each class costs half as much to create at import.
    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Section)
            and type(other) is type(self)
            and _values(self) == _values(other)
        )

    __hash__ = None  # type: ignore[assignment]  # sections hold lists and dicts

    def __repr__(self) -> str:
        fields = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in _fields(self))
        return f"{type(self).__name__}({fields})"

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in schema_of(type(self))

    def __getitem__(self, name: str) -> Any:
        """A setting read by name (``tls[key]`` for key in a list of names); KeyError if none."""
        if name not in schema_of(type(self)):
            raise KeyError(name)
        return getattr(self, name)

    if not TYPE_CHECKING:  # mypy must still flag a misspelt setting

        def __getattr__(self, name: str) -> Any:
            if name.startswith("__"):
                raise AttributeError(name)
            path = type(self)._section_path
            raise AttributeError(f"{path + '.' if path else ''}{name}")


def _fields(obj: Section) -> tuple[dataclasses.Field, ...]:
    return dataclasses.fields(obj)  # type: ignore[arg-type]


def _values(obj: Section) -> list[Any]:
    return [getattr(obj, f.name) for f in _fields(obj)]


def _plain(value: Any) -> Any:
    if isinstance(value, Section):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, Section)


Spec = dict[str, "Key | type[Section]"]


_SPECS: dict[type, Spec] = {}


def schema_of(cls: type[Section]) -> Spec:
    """Name -> complete :class:`Key` (types from the annotation) or nested section class, in
    declaration order. Fields without setting metadata (``FeatureParams.kind``) are not settings."""
    if cls not in _SPECS:
        spec: Spec = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if _is_section(f.type):
                spec[f.name] = cast(type[Section], f.type)
            elif KEY in f.metadata:
                spec[f.name] = _complete(f.metadata[KEY], f.type)
        _SPECS[cls] = spec
    return _SPECS[cls]


def set_paths(cls: type[Section], path: str = "") -> None:
    """Record each section's key path (for error messages) under the root section ``cls``."""
    cls._section_path = path
    for name, spec in schema_of(cls).items():
        child = f"{path}.{name}" if path else name
        if isinstance(spec, type):
            set_paths(spec, child)
        elif _is_section(spec.item):
            set_paths(spec.item, child + "[]")


def _complete(key: Key, annotation: Any) -> Key:
    members = (
        list(get_args(annotation)) if isinstance(annotation, types.UnionType) else [annotation]
    )
    nullable = type(None) in members
    accepted: list[type] = []
    item = None
    for member in (m for m in members if m is not type(None)):
        origin = get_origin(member) or member
        if origin is list:
            accepted.append(list)
            item = get_args(member)[0]
        elif origin is dict:
            accepted.append(dict)
            item = get_args(member)[1]
        elif member is float:
            accepted += [float, int]
        else:
            accepted.append(member)
    return dataclasses.replace(key, types=tuple(accepted), nullable=nullable, item=item)


# --- validation ----------------------------------------------------------------------------


def build(cls: type[S], values: Any, path: str) -> S:
    """A ``cls`` from a parsed mapping: unknown keys refused, every value checked, defaults
    filled in. Raises ConfigError (one line naming the key path)."""
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: must be a mapping, got {values!r}")
    spec = schema_of(cls)
    unknown = [k for k in values if k not in spec]
    if unknown:
        raise ConfigError(f"{join(path, unknown[0])}: unknown key (known here: {', '.join(spec)})")
    out: dict[str, Any] = {}
    for name, item in spec.items():
        key_path = join(path, name)
        if isinstance(item, type):
            given = values.get(name)
            out[name] = build(item, {} if given is None else given, key_path)
        elif name in values:
            out[name] = check_value(item, values[name], key_path)
    return cls(**out)


def check_value(key: Key, value: Any, path: str) -> Any:
    """``value`` checked against ``key`` (ints become floats where a number is expected)."""
    if value is None:
        if key.nullable:
            return None
        raise ConfigError(f"{path}: must be {_type_name(key.types)}, got null")
    # bool is an int in Python; YAML's `yes` must not pass as a port number.
    if isinstance(value, bool) and bool not in key.types:
        raise ConfigError(f"{path}: must be {_type_name(key.types)}, got {value!r}")
    if not isinstance(value, key.types):
        raise ConfigError(f"{path}: must be {_type_name(key.types)}, got {value!r}")
    if float in key.types and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if key.choices and value not in key.choices:
        raise ConfigError(
            f"{path}: must be one of {', '.join(map(str, key.choices))}, got {value!r}"
        )
    if isinstance(value, float) and not math.isfinite(value):
        # NaN compares false with every bound, so it would pass any range check; an infinite
        # size, wait or timeout is never what a recorder can honour.
        raise ConfigError(f"{path}: must be a finite number, got {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        low, high = key.min, key.max
        if (low is not None and value < low) or (high is not None and value > high):
            if low is not None and high is not None:
                raise ConfigError(f"{path}: must be {_num(low)}..{_num(high)}, got {value!r}")
            if low is not None:
                raise ConfigError(f"{path}: must be >= {_num(low)}, got {value!r}")
            assert high is not None
            raise ConfigError(f"{path}: must be <= {_num(high)}, got {value!r}")
    if isinstance(value, str) and key.min is not None and len(value) < key.min:
        raise ConfigError(f"{path}: must not be empty")
    if isinstance(value, list):
        return [_check_item(key.item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {str(k): _check_item(key.item, v, f"{path}.{k}") for k, v in value.items()}
    return value


def _check_item(item: Any, value: Any, path: str) -> Any:
    if item is None:
        return value
    if _is_section(item):
        return build(item, value, path)
    return check_value(Key(None, "", types=(float, int) if item is float else (item,)), value, path)


def setting_problems(obj: Section) -> list[str]:
    """Every setting of a built section that is out of its bounds or choices, one message each
    (``n_mels: must be 1..512, got 0``): how classes made on a section check themselves."""
    names = [n for n, spec in schema_of(type(obj)).items() if isinstance(spec, Key)]
    return check_settings(type(obj), {name: getattr(obj, name) for name in names})


def check_settings(cls: type[Section], values: dict[str, Any]) -> list[str]:
    """Messages for the ``values`` (setting name -> value) that settings of ``cls`` refuse:
    how a class that takes some of a section's settings holds them to the section's bounds."""
    problems = []
    spec = schema_of(cls)
    for name, value in values.items():
        key = spec[name]
        assert isinstance(key, Key), name
        try:
            check_value(key, value, name)
        except ConfigError as exc:
            problems.append(str(exc))
    return problems


def default_of(cls: type[Section], name: str) -> Any:
    """The default of setting ``name`` of ``cls`` (for classes that take a section's defaults)."""
    spec = schema_of(cls)[name]
    assert isinstance(spec, Key), name
    return copy.deepcopy(spec.default)


def _type_name(accepted: tuple) -> str:
    names = {
        bool: "true/false",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
    }
    if float in accepted:
        accepted = tuple(t for t in accepted if t is not int)
    return " or ".join(names.get(t, t.__name__) for t in accepted)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name
