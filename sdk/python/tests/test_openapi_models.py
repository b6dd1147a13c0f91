"""The SDK's models against the service's OpenAPI document (needs no
service).

``web/openapi.json`` is the document the service serves at
``/openapi.json`` (without the host's limits); warren-server's ``openapi``
test keeps it current with the Rust types. Every model in
:mod:`warren.models` is either mapped here to the schema it parses
(:data:`MODELS`, with the fields the SDK renames) or listed in
:data:`NOT_REST` with the reason it has no schema. For each mapped model:

* every property of the schema (required or not) is a field of the model,
  so a field added to the Rust type fails here until the model has it;
* the model has no field the schema lacks;
* a field the schema allows to be null (or to be missing) can be None in
  the model, unless the model gives it a non-None default;
* ``from_json`` reads each field from the property it is mapped to (checked
  by parsing a sample document built from the schema);

and each string enum of the SDK has exactly the values of its schema's enum.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import json
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from warren import models

OPENAPI = Path(__file__).resolve().parents[3] / "web" / "openapi.json"


@dataclass(frozen=True)
class Mapped:
    """How a model corresponds to schemas."""

    schemas: tuple[str, ...]
    """The schemas it parses (their properties together)."""
    renamed: Mapping[str, str] = field(default_factory=dict)
    """Model field -> schema property, where the names differ."""


MODELS: dict[type[Any], Mapped] = {
    models.SandboxInfo: Mapped(("Sandbox",), {"sandbox_id": "id", "envs": "env"}),
    models.PauseResult: Mapped(("PauseResult",)),
    models.SnapshotInfo: Mapped(("Snapshot",)),
    models.CommandResult: Mapped(("ExecResult",)),
    models.ProcessInfo: Mapped(("ProcessEntry",)),
    models.FileInfo: Mapped(("FileInfo",)),
    models.Template: Mapped(("Template",), {"template_id": "id"}),
    models.Event: Mapped(("Event",), {"event_id": "id"}),
    # One model for a listed key and a created one (only that has `key`).
    models.ApiKey: Mapped(("ApiKey", "CreatedKey"), {"key_id": "id"}),
    models.Health: Mapped(("Health",)),
    models.NetworkPolicy: Mapped(("NetworkPolicy",)),
}

ENUMS: dict[type[enum.StrEnum], str] = {
    models.SandboxState: "SandboxState",
    models.FileType: "FileKind",
}

NOT_REST: dict[str, str] = {
    "ExitStatus": "how a PTY session ended: a WebSocket message, not a REST body",
    "OutputChunk": "a piece of streamed output (WebSocket / NDJSON), not a REST body",
}


def _document() -> dict[str, Any]:
    if not OPENAPI.is_file():
        pytest.fail(f"{OPENAPI} is missing (run `WARREN_UPDATE_OPENAPI=1 cargo test -p warren-server --test openapi`)")
    document: dict[str, Any] = json.loads(OPENAPI.read_text())
    return document


DOCUMENT = _document()
SCHEMAS: dict[str, Any] = DOCUMENT["components"]["schemas"]


def _resolve(schema: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str):
        prefix = "#/components/schemas/"
        assert ref.startswith(prefix), ref
        return typing.cast(Mapping[str, Any], SCHEMAS[ref.removeprefix(prefix)])
    return schema


def _properties(mapped: Mapped) -> dict[str, Mapping[str, Any]]:
    props: dict[str, Mapping[str, Any]] = {}
    for name in mapped.schemas:
        assert name in SCHEMAS, f"no schema {name} in {OPENAPI}"
        props.update(SCHEMAS[name].get("properties", {}))
    return props


def _required(mapped: Mapped) -> set[str]:
    """Properties every one of the schemas requires."""
    sets = [set(SCHEMAS[name].get("required", [])) for name in mapped.schemas]
    return set.intersection(*sets)


def _nullable(schema: Mapping[str, Any]) -> bool:
    kind = schema.get("type")
    if kind == "null" or (isinstance(kind, list) and "null" in kind):
        return True
    for key in ("oneOf", "anyOf"):
        if any(_nullable(s) for s in schema.get(key, [])):
            return True
    return False


def _wire_names(model: type[Any], mapped: Mapped) -> dict[str, str]:
    """Model field -> schema property."""
    return {f.name: mapped.renamed.get(f.name, f.name) for f in dataclasses.fields(model)}


def _model_classes() -> Iterator[str]:
    for name, value in vars(models).items():
        if isinstance(value, type) and value.__module__ == models.__name__ and not name.startswith("_"):
            yield name


def test_every_model_is_mapped_or_explained() -> None:
    mapped = {cls.__name__ for cls in [*MODELS, *ENUMS]}
    for name in _model_classes():
        assert name in mapped or name in NOT_REST, (
            f"warren.models.{name} is neither mapped to an OpenAPI schema in {__file__} (MODELS, ENUMS) "
            "nor listed in NOT_REST with a reason"
        )
    for name in NOT_REST:
        assert name in set(_model_classes()), f"NOT_REST names {name}, which warren.models no longer has"


@pytest.mark.parametrize("model", list(MODELS), ids=lambda m: m.__name__)
def test_model_fields_match_the_schema(model: type[Any]) -> None:
    mapped = MODELS[model]
    props = _properties(mapped)
    wire = _wire_names(model, mapped)
    for python_name in mapped.renamed:
        assert python_name in wire, f"{model.__name__}: renamed field {python_name} is not a field"
    have = set(wire.values())
    schemas = " + ".join(mapped.schemas)

    missing_required = sorted(_required(mapped) - have)
    assert not missing_required, f"{model.__name__} lacks fields {schemas} requires: {missing_required}"
    missing = sorted(set(props) - have)
    assert not missing, (
        f"{model.__name__} lacks fields of {schemas}: {missing} (add them to warren/models.py and its from_json)"
    )
    extra = sorted(have - set(props))
    assert not extra, f"{model.__name__} has fields {schemas} does not describe: {extra}"


@pytest.mark.parametrize("model", list(MODELS), ids=lambda m: m.__name__)
def test_nullable_fields_can_be_none(model: type[Any]) -> None:
    mapped = MODELS[model]
    props = _properties(mapped)
    required = _required(mapped)
    hints = typing.get_type_hints(model)
    for f in dataclasses.fields(model):
        prop = mapped.renamed.get(f.name, f.name)
        may_lack = prop not in required or _nullable(props[prop])
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        if may_lack and not has_default:
            assert type(None) in typing.get_args(hints[f.name]), (
                f"{model.__name__}.{f.name}: {prop} may be null or missing, but the field cannot be None"
            )


@pytest.mark.parametrize("sdk_enum", list(ENUMS), ids=lambda e: e.__name__)
def test_enum_values_match_the_schema(sdk_enum: type[enum.StrEnum]) -> None:
    schema = SCHEMAS[ENUMS[sdk_enum]]
    assert sorted(m.value for m in sdk_enum) == sorted(schema["enum"]), (
        f"{sdk_enum.__name__} has {sorted(m.value for m in sdk_enum)}, "
        f"the schema {ENUMS[sdk_enum]} has {sorted(schema['enum'])}"
    )


def test_enum_typed_properties_use_the_sdk_enums() -> None:
    """A property typed by an enum schema is parsed into the SDK's enum, or
    is a plain string documented as comparable with it."""
    by_schema = {name: sdk_enum for sdk_enum, name in ENUMS.items()}
    for schema_name, schema in SCHEMAS.items():
        if "enum" in schema:
            assert schema_name in by_schema, (
                f"the schema {schema_name} is an enum ({schema['enum']}) the SDK has no StrEnum for (ENUMS)"
            )


# --- from_json reads what the schema names ---------------------------------

_counter = itertools.count(1000)


def _sample(schema: Mapping[str, Any]) -> Any:
    """A value of the schema, distinct from every other sample."""
    schema = _resolve(schema)
    if "enum" in schema:
        values = schema["enum"]
        return values[next(_counter) % len(values)]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    n = next(_counter)
    if kind == "string":
        if schema.get("format") == "date-time":
            at = datetime(2020, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=n)
            return at.isoformat()
        return f"s{n}"
    if kind == "integer":
        return n
    if kind == "number":
        return n + 0.5
    if kind == "boolean":
        return True  # every model defaults booleans to False
    if kind == "array":
        return [_sample(schema.get("items", {}))]
    if kind == "object" and "properties" in schema:
        return {name: _sample(prop) for name, prop in schema["properties"].items()}
    if kind == "object":
        return {f"k{n}": _sample(schema.get("additionalProperties", {"type": "string"}))}
    return {f"k{n}": f"v{n}"}  # anything (e.g. an event's detail)


def _same(parsed: Any, raw: Any, where: str) -> None:
    if dataclasses.is_dataclass(parsed) and not isinstance(parsed, type):
        model = type(parsed)
        assert model in MODELS, f"{where}: nested {model.__name__} is not mapped"
        for python_name, prop in _wire_names(model, MODELS[model]).items():
            assert isinstance(raw, Mapping)
            if prop in raw:
                _same(getattr(parsed, python_name), raw[prop], f"{where}.{python_name}")
        return
    if isinstance(parsed, enum.Enum):
        assert parsed.value == raw, f"{where}: {parsed!r} is not {raw!r}"
    elif isinstance(parsed, datetime):
        assert parsed == datetime.fromisoformat(raw), f"{where}: {parsed!r} is not {raw!r}"
    else:
        assert parsed == raw, f"{where}: from_json gave {parsed!r}, the document had {raw!r}"


@pytest.mark.parametrize("model", list(MODELS), ids=lambda m: m.__name__)
def test_from_json_reads_the_schema_properties(model: type[Any]) -> None:
    mapped = MODELS[model]
    raw = {name: _sample(prop) for name, prop in _properties(mapped).items()}
    parsed = model.from_json(raw)
    _same(parsed, raw, model.__name__)
