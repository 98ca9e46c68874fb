"""One way to declare and read configuration: field specs over frozen dataclasses.

Why our own (one small module) rather than pydantic: `edge.common` ships in
the field tool, which must install with the standard library and
cryptography alone, and the device is a Raspberry Pi Zero, where a large
dependency costs start-up time and memory for a handful of checks.

A configuration class is a frozen dataclass whose fields are declared with
`setting(...)`: the kind of value, a check and what a good value looks like.
Every section of the TOML file (`read_section`) and every command-line flag
that sets the same thing (`read_flags`) goes through these declarations, and
the class's `__post_init__` runs the same checks (`validate`) when code builds
it directly, so there is one rule per setting and one shape of error:

    configuration [camera] fps: -3 is below 0
      what to do: expected frames per second, 0 or more (0: files ... as fast as they are read)
    --threads 0: is below 1
      what to do: expected a whole number of CPU inference threads, at least 1

Unknown keys are errors. Config objects do no I/O.
"""
from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self, TypeVar

from edge.common.errors import ConfigError, EdgeError

# The key under which a field's `Spec` is kept in `dataclasses.field(metadata=...)`.
SPEC = "edge.common.schema"
# Marks a field holding another settings class whose keys sit in the same section.
INLINE = "edge.common.schema.inline"

Check = Callable[[Any], "str | None"]
"""A check on a converted value: None when it is fine, else what is wrong ("is below 1")."""


class Kind(enum.Enum):
    """What a value must be, named as an installer reads it."""

    TEXT = "text"
    WHOLE = "a whole number"
    NUMBER = "a number"
    SWITCH = "true or false"
    PATH = "a path"
    PATHS = "a list of paths"
    TEXTS = "a list of text values"
    TABLE = "a table of text values"


@dataclasses.dataclass(frozen=True, slots=True)
class Spec:
    """A setting: its kind, what a good value looks like, and the check that says so."""

    kind: Kind
    expected: str
    check: Check | None = None
    # The key in the file (and in errors) when it differs from the field's name.
    key: str | None = None
    # None is allowed and means "not set".
    optional: bool = False


class Settings(Protocol):
    """A configuration class: a dataclass that names its section."""

    SECTION: ClassVar[str]
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]


S = TypeVar("S", bound=Settings)


class Section:
    """The base of every configuration section, so that each declares only its fields.

    Subclasses are frozen, slotted dataclasses that name their `SECTION` and
    declare their fields with `setting`. Building one, from code or from the
    file, checks every field (`validate`), then the rules between fields, which
    a section states by overriding `check`; `from_mapping` reads the section's
    TOML table, refusing unknown keys.
    """

    __slots__ = ()
    SECTION: ClassVar[str]
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    def __post_init__(self) -> None:
        validate(self)
        self.check()

    def check(self) -> None:
        """Rules that involve more than one field; raise `refuse(...)` (none by default)."""

    @classmethod
    def from_mapping(cls, data: object) -> Self:
        return read_section(cls, data)


def setting(default: Any = dataclasses.MISSING, *, kind: Kind, expected: str, check: Check | None = None,
            key: str | None = None, optional: bool = False, factory: Callable[[], Any] | None = None) -> Any:
    """Declare a dataclass field as a configuration setting (no default: the key is required)."""
    spec = Spec(kind, expected, check, key, optional)
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={SPEC: spec})
    return dataclasses.field(default=default, metadata={SPEC: spec})


def inline(factory: Callable[[], Any]) -> Any:
    """Declare a field holding another settings class read from the same section's keys."""
    return dataclasses.field(default_factory=factory, metadata={INLINE: True})


# --- checks: each returns what is wrong, or None -----------------------------------------------


def at_least(minimum: float) -> Check:
    return lambda value: None if value >= minimum else f"is below {minimum}"


def positive(value: float) -> str | None:
    return None if value > 0 else "is not above 0"


def positive_up_to(high: float) -> Check:
    """Above 0 and at most `high`: a rate or a time window of 0 means nothing, and past `high` is a typo."""
    return lambda value: None if 0 < value <= high else f"is not between 0 (excluded) and {high:g}"


def between(low: float, high: float) -> Check:
    """Strictly between: a probability threshold of 0 or 1 means nothing."""
    return lambda value: None if low < value < high else f"is not between {low} and {high}"


def one_of(choices: Iterable[str]) -> Check:
    allowed = tuple(choices)
    return lambda value: None if value in allowed else f"is not one of {', '.join(allowed)}"


def not_empty(value: str) -> str | None:
    return None if value.strip() else "is empty"


def choices_text(choices: Iterable[str]) -> str:
    """'a, b or c': for `expected` texts, so the choices are written once."""
    items = list(choices)
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


# --- errors --------------------------------------------------------------------------------------


def shown(value: object) -> str:
    """A value as it would be written in the TOML file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Path):
        return repr(str(value))
    if isinstance(value, tuple):
        return repr(list(value))
    return repr(value)


class SettingError(ConfigError):
    """A setting's value is wrong: which section and key, the value, what is wrong, what was expected."""

    def __init__(self, section: str, key: str, value: object, problem: str, expected: str,
                 *, missing: bool = False) -> None:
        what = problem if missing or value is None else f"{shown(value)} {problem}"
        super().__init__(f"[{section}] {key}", what, expected)
        self.section = section
        self.key = key
        self.value = value
        self.problem = problem
        self.expected = expected


class FlagError(ConfigError):
    """A command-line flag's value is wrong: the same checks as the setting, named by the flag.

    Exit code 2 like any other usage error, and no traceback.
    """

    def __init__(self, flag: str, text: str, problem: str, expected: str) -> None:
        EdgeError.__init__(self, f"{flag} {text}: {problem}" if text else f"{flag}: {problem}", f"expected {expected}")
        self.where = flag


def refuse(section: str, key: str, value: object, problem: str, expected: str) -> SettingError:
    """For checks that look at two settings at once (raised from `__post_init__`)."""
    return SettingError(section, key, value, problem, expected)


# --- reading -------------------------------------------------------------------------------------


class _Wrong(Exception):
    """A value is of the wrong kind; carries what is wrong."""


def _convert(spec: Spec, value: object) -> Any:
    """A value from the file (or already typed by the caller) as the field's type."""
    kind = spec.kind
    if kind is Kind.TEXT and isinstance(value, str):
        return value
    if kind is Kind.WHOLE and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is Kind.NUMBER and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is Kind.SWITCH and isinstance(value, bool):
        return value
    if kind is Kind.PATH and _is_path(value):
        return Path(value)  # type: ignore[arg-type]
    if kind is Kind.PATHS and isinstance(value, (list, tuple)) and all(_is_path(v) for v in value):
        return tuple(Path(v) for v in value)
    if kind is Kind.TEXTS and isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    if kind is Kind.TABLE and isinstance(value, Mapping) \
            and all(isinstance(v, (str, int, float, bool)) for v in value.values()):
        return {str(k): shown(v) if isinstance(v, bool) else str(v) for k, v in value.items()}
    raise _Wrong(f"is not {kind.value}")


def _is_path(value: object) -> bool:
    if isinstance(value, Path):
        return True
    return isinstance(value, str) and bool(value.strip()) and "\x00" not in value


def _from_text(spec: Spec, text: str) -> Any:
    """A flag's text as the field's type (the shell gives every flag as text)."""
    try:
        if spec.kind is Kind.WHOLE:
            return int(text)
        if spec.kind is Kind.NUMBER:
            return float(text)
    except ValueError:
        raise _Wrong(f"is not {spec.kind.value}") from None
    return text


def _problem(spec: Spec, value: Any) -> str | None:
    if value is None:
        return None if spec.optional else "is not set"
    return spec.check(value) if spec.check is not None else None


def _layout(cls: type) -> dict[str, tuple[str, Spec, type]]:
    """Every key the class reads, with the field it fills, its spec and the class that owns it."""
    keys: dict[str, tuple[str, Spec, type]] = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get(INLINE):
            keys.update(_layout(_inline_type(cls, f.name)))
        elif SPEC in f.metadata:
            spec: Spec = f.metadata[SPEC]
            keys[spec.key or f.name] = (f.name, spec, cls)
    return keys


def _inline_type(cls: type, name: str) -> type:
    factory = cls.__dataclass_fields__[name].default_factory  # type: ignore[attr-defined]
    return type(factory())


def validate(config: Settings) -> None:
    """Run every field's check on a built configuration; `__post_init__` calls it."""
    section = type(config).SECTION
    for f in dataclasses.fields(config):
        spec = f.metadata.get(SPEC)
        if spec is None:
            continue
        value = getattr(config, f.name)
        problem = _problem(spec, value)
        if problem is not None:
            raise SettingError(section, spec.key or f.name, value, problem, spec.expected)


def read_section(cls: type[S], data: object) -> S:
    """Build a configuration class from its TOML table; every problem is a `SettingError`."""
    section = cls.SECTION
    if not isinstance(data, Mapping):
        raise ConfigError(f"[{section}]", f"{shown(data)} is not a table", f"a [{section}] section")
    layout = _layout(cls)
    for key in data:
        if key not in layout:
            raise SettingError(section, str(key), data[key], f"is an unknown key (set to {shown(data[key])})",
                               f"one of {', '.join(layout)}", missing=True)
    return _build(cls, data, section)


def _build(cls: type[S], data: Mapping[str, Any], section: str) -> S:
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get(INLINE):
            values[f.name] = _build(_inline_type(cls, f.name), data, section)
            continue
        spec = f.metadata.get(SPEC)
        if spec is None:
            continue
        key = spec.key or f.name
        if key not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise SettingError(section, key, None, "is missing", spec.expected, missing=True)
            continue
        written = data[key]
        try:
            value = None if written is None and spec.optional else _convert(spec, written)
        except _Wrong as wrong:
            raise SettingError(section, key, written, str(wrong), spec.expected) from None
        problem = _problem(spec, value)  # here too, so the error shows the value as written
        if problem is not None:
            raise SettingError(section, key, written, problem, spec.expected)
        values[f.name] = value
    return cls(**values)


def read_flags(cls: type[S], flags: Mapping[str, tuple[str, object]]) -> S:
    """Build a configuration class from command-line flags: {key: (flag, value or None if not given)}.

    The same conversions and checks as the file; an error names the flag and the text given.
    """
    layout = _layout(cls)
    data: dict[str, Any] = {}
    for key, (flag, given) in flags.items():
        if given is None:
            continue
        _name, spec, _owner = layout[key]
        text = given if isinstance(given, str) else shown(given)
        try:
            value = _from_text(spec, given) if isinstance(given, str) else given
            value = _convert(spec, value)
        except _Wrong as wrong:
            raise FlagError(flag, text, str(wrong), spec.expected) from None
        problem = _problem(spec, value)
        if problem is not None:
            raise FlagError(flag, text, problem, spec.expected)
        data[key] = value
    try:
        return _build(cls, data, cls.SECTION)
    except SettingError as exc:  # a check across settings, raised by __post_init__
        if exc.key not in flags:
            raise
        flag, given = flags[exc.key]
        text = "" if given is None else given if isinstance(given, str) else shown(given)
        raise FlagError(flag, text, exc.problem, exc.expected) from None


def read_flag(flag: str, text: str | None, *, kind: Kind, expected: str, check: Check | None = None) -> Any:
    """One flag that is no configuration setting (`--seconds`, `--frames`), with the same rules."""
    if text is None:
        return None
    spec = Spec(kind, expected, check)
    try:
        value = _convert(spec, _from_text(spec, text))
    except _Wrong as wrong:
        raise FlagError(flag, text, str(wrong), expected) from None
    problem = _problem(spec, value)
    if problem is not None:
        raise FlagError(flag, text, problem, expected)
    return value


def describe(cls: type, key: str) -> str:
    """A setting's expectation and default, for a flag's help: written once, in the declaration."""
    name, spec, owner = _layout(cls)[key]
    default = owner.__dataclass_fields__[name].default  # type: ignore[attr-defined]
    if default is dataclasses.MISSING or default is None or default == ():
        return spec.expected
    return f"{spec.expected} (default: {default if isinstance(default, str) else shown(default)})"
