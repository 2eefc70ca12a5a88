"""Offline validation of AWS requests against botocore's API model.

botocore checks required members and types before it sends a request, but not the
``pattern``/``min``/``max``/``enum`` constraints of the model (they sit in
``shape.metadata``); AWS then refuses such a request only after a round trip, with a
message that names the member in lowerCamelCase. :func:`validate_request` runs botocore's own
validator and a walker over those constraints, and raises one
:class:`~camlabel.errors.ValidationError` that lists every violation with its field path
(``HumanTaskConfig.TaskKeywords[0]``), the value received and the rule.

Pattern semantics: AWS's Java services match the whole value (``Pattern.matches``), so a
pattern here must match the full string. Java-only classes are translated to supersets
(``\\p{L}``/``\\p{N}`` -> ``\\w``, ``\\p{Z}`` -> ``\\s``): a translated pattern can accept a
little more than AWS does, never less. A pattern Python cannot compile is skipped.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from camlabel.errors import ValidationError

_JAVA_CLASSES = {r"\p{L}": r"\w", r"\p{N}": r"\w", r"\p{Z}": r"\s", r"\p{Alnum}": r"\w"}
_MAX_SHOWN = 80


@dataclass(frozen=True)
class Violation:
    """One broken rule: where (dotted path), what was received, which rule."""

    path: str
    value: Any
    rule: str

    def __str__(self) -> str:
        return f"{self.path or '<request>'}: {self.rule}. Received: {_show(self.value)}"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


@functools.lru_cache(maxsize=256)
def _compile(pattern: str) -> re.Pattern[str] | None:
    translated = pattern
    for java, py in _JAVA_CLASSES.items():
        translated = translated.replace(java, py)
    try:
        return re.compile(translated, re.DOTALL)
    except re.error:
        return None


@functools.lru_cache(maxsize=8)
def service_model(service: str) -> Any:
    """botocore's ServiceModel of ``service`` from the installed data files (no network)."""
    import botocore.session

    return botocore.session.get_session().get_service_model(service)


def constraint_violations(value: Any, shape: Any, path: str = "") -> Iterator[Violation]:
    """Walk ``value`` along ``shape`` and yield every pattern/min/max/enum violation.

    Unknown members and type errors are left to botocore's validator (it reports them).
    """
    md = shape.metadata
    kind = shape.type_name
    if kind == "structure":
        if not isinstance(value, Mapping):
            return
        for name, member in shape.members.items():
            if name in value and value[name] is not None:
                sub = f"{path}.{name}" if path else name
                yield from constraint_violations(value[name], member, sub)
        return
    if kind == "list":
        if not isinstance(value, list | tuple):
            return
        yield from _bounds(len(value), md, path, value, "item count")
        for i, item in enumerate(value):
            yield from constraint_violations(item, shape.member, f"{path}[{i}]")
        return
    if kind == "map":
        if not isinstance(value, Mapping):
            return
        yield from _bounds(len(value), md, path, value, "entry count")
        for k, v in value.items():
            yield from constraint_violations(k, shape.key, f"{path}{{key {k!r}}}")
            yield from constraint_violations(v, shape.value, f"{path}[{k!r}]")
        return
    if kind == "string":
        if not isinstance(value, str):
            return
        yield from _bounds(len(value), md, path, value, "length")
        enum = md.get("enum")
        if enum and value not in enum:
            yield Violation(path, value, f"must be one of {list(enum)}")
        pattern = md.get("pattern")
        if pattern:
            rx = _compile(pattern)
            if rx is not None and rx.fullmatch(value) is None:
                yield Violation(path, value, f"must match the pattern {pattern!r} (whole value)")
        return
    if kind == "blob":
        if isinstance(value, bytes | bytearray):
            yield from _bounds(len(value), md, path, f"<{len(value)} bytes>", "size")
        return
    if kind in ("integer", "long", "float", "double"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return
        if "min" in md and value < md["min"]:
            yield Violation(path, value, f"must be >= {md['min']}")
        if "max" in md and value > md["max"]:
            yield Violation(path, value, f"must be <= {md['max']}")


def _bounds(n: int, md: Mapping[str, Any], path: str, value: Any, what: str) -> Iterator[Violation]:
    if "min" in md and n < md["min"]:
        yield Violation(path, value, f"{what} must be >= {md['min']} (is {n})")
    if "max" in md and n > md["max"]:
        yield Violation(path, value, f"{what} must be <= {md['max']} (is {n})")


def request_problems(service: str, operation: str, params: Mapping[str, Any]) -> list[str]:
    """Every problem botocore's validator and the constraint walker find (empty = valid)."""
    from botocore.validate import ParamValidator

    shape = service_model(service).operation_model(operation).input_shape
    problems: list[str] = []
    report = ParamValidator().validate(dict(params), shape)
    if report.has_errors():
        problems.extend(
            line.strip()
            for line in report.generate_report().splitlines()
            if line.strip() and not line.startswith("Parameter validation failed")
        )
    problems.extend(str(v) for v in constraint_violations(params, shape))
    return problems


def validate_request(service: str, operation: str, params: Mapping[str, Any]) -> None:
    """Raise ValidationError if ``params`` would be refused by ``service``'s ``operation``.

    The message names each field path, the value received and the rule it breaks.
    """
    problems = request_problems(service, operation, params)
    if problems:
        raise ValidationError(
            f"{operation} request refused before sending ({len(problems)} problem(s)): "
            + "; ".join(problems),
            hint=f"fix the setting(s) above; the rules come from botocore's {service} API model",
        )
