"""Markdown for the reference pages, made from the code itself."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from workers import cli
from workers.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
_EXAMPLE = ROOT / "settings.example.json"


def _cell(text: str) -> str:
    """Text for a table cell: its bars escaped."""
    return text.replace("|", "\\|").replace("<", "&lt;")


# -- settings ---------------------------------------------------------------------------


def setting_keys(
    model: type[BaseModel] = Settings, prefix: str = ""
) -> Iterator[tuple[str, FieldInfo]]:
    """Every key of the settings, dotted (`workers.queue.lease`), with its field; a section
    is listed before its keys, the entries of a list or map of sections as `tokens[].name`
    and `limits.<Type>.concurrency`."""
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        yield key, field
        section = _section_of(field.annotation)
        if section is not None:
            yield from setting_keys(section, f"{key}.")
        for container, marker in ((list, "[]."), (dict, ".<Type>.")):
            inner = _inner_section(field.annotation, container)
            if inner is not None:
                yield from setting_keys(inner, f"{key}{marker}")


def _section_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _inner_section(annotation: Any, container: type) -> type[BaseModel] | None:
    """The section a `list[Section]` or `dict[str, Section]` holds."""
    if get_origin(annotation) is not container:
        return None
    return _section_of(get_args(annotation)[-1])


def _descriptions() -> dict[str, str]:
    """The `//key` comments of settings.example.json, by dotted key."""
    found: dict[str, str] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if key.startswith("//") and key != "//" and isinstance(value, str):
                found[f"{prefix}{key[2:]}"] = value
            elif isinstance(value, dict):
                walk(value, f"{prefix}{key}.")

    walk(json.loads(_EXAMPLE.read_text()), "")
    return found


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is None:
        return getattr(annotation, "__name__", str(annotation))
    args = ", ".join(_type_name(arg) for arg in get_args(annotation))
    name = getattr(origin, "__name__", str(origin)).replace("UnionType", "").replace("Union", "")
    if name == "Literal":
        return " | ".join(repr(arg) for arg in get_args(annotation))
    if not name:
        return " | ".join(_type_name(arg) for arg in get_args(annotation))
    return f"{name}[{args}]"


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "(required)"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "(section)"
    return f"`{json.dumps(value)}`"


def _variable(key: str) -> str:
    if "[]" in key or "<Type>" in key:  # inside a list or map: set the whole value
        key = key.split("[]")[0].split(".<Type>")[0]
    section, _, rest = key.partition(".")
    tail = rest.replace(".", "__").upper()
    return f"WORKERS_{section.upper()}__{tail}" if rest else f"WORKERS_{section.upper()}"


def settings_reference() -> str:
    """A table of every settings key: its type, default, environment variable and meaning."""
    described = _descriptions()
    rows = ["| key | type | default | environment | what it does |", "|---|---|---|---|---|"]
    for key, field in setting_keys():
        if _section_of(field.annotation) is not None:
            rows.append(f"| **`{key}`** | section | | | {described.get(key, '')} |")
            continue
        what = _cell(described.get(key) or field.description or "")
        kind = _type_name(field.annotation).replace("|", "\\|")
        rows.append(f"| `{key}` | {kind} | {_default(field)} | `{_variable(key)}` | {what} |")
    return "\n".join(rows)


# -- the command line -------------------------------------------------------------------


def commands(
    parser: argparse.ArgumentParser | None = None, path: str = "workers"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every command (`workers`, `workers jobs ls`, ...) and its parser."""
    parser = parser or cli.parser()
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, f"{path} {name}")


def cli_reference() -> str:
    """Every command with its description and its options, as argparse has them."""
    parts = []
    for path, parser in commands():
        parts.append(f"### `{path}`\n")
        if parser.description:
            parts.append(parser.description.strip() + "\n")
        rows = ["| option | what it does |", "|---|---|"]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
                continue
            names = ", ".join(action.option_strings) or action.dest
            metavar = "" if action.nargs == 0 else f" {action.metavar or action.dest.upper()}"
            if not action.option_strings:
                metavar = ""
            text = (
                (action.help or "").replace("|", "\\|").replace("%(default)s", str(action.default))
            )
            rows.append(f"| `{names}{metavar}` | {text} |")
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if subs:
            rows.append(f"| `{{{','.join(subs[0].choices)}}}` | the commands below |")
        parts.append("\n".join(rows) + "\n")
    return "\n".join(parts)


# -- the HTTP API -----------------------------------------------------------------------


def http_reference() -> str:
    """Every route of the HTTP API from its OpenAPI document: what it does, its parameters,
    its request and response bodies with an example, and its errors."""
    from fastapi.openapi.utils import get_openapi

    from workers.web.problems import TYPES
    from workers.web.server import create_app

    web = create_app(settings=Settings())  # the routes only: no app booted, no type listed
    document = get_openapi(title=web.title, version=web.version, routes=web.routes)
    schemas = document["components"]["schemas"]
    parts = [_route_index(document)]
    for path, operations in sorted(document["paths"].items()):
        for method, operation in operations.items():
            parts.append(_route(method, path, operation, schemas))
    parts.append(_problem_types(TYPES))
    return "\n\n".join(parts)


def _route_index(document: dict[str, Any]) -> str:
    rows = ["| method | path | what it does |", "|---|---|---|"]
    for path, operations in sorted(document["paths"].items()):
        for method, operation in operations.items():
            rows.append(f"| `{method.upper()}` | `{path}` | {_cell(operation['summary'])} |")
    return "\n".join(rows)


def _route(method: str, path: str, operation: dict[str, Any], schemas: dict[str, Any]) -> str:
    lines = [f"### `{method.upper()} {path}`", "", operation["summary"]]
    if operation.get("description"):
        lines += ["", operation["description"].strip()]
    parameters = operation.get("parameters") or []
    if parameters:
        lines += ["", "| parameter | in | type | what it is |", "|---|---|---|---|"]
        for one in parameters:
            kind = _schema_type(one.get("schema", {}), schemas)
            what = one.get("description") or one.get("schema", {}).get("description") or ""
            lines.append(f"| `{one['name']}` | {one['in']} | {kind} | {_cell(what)} |")
    body = operation.get("requestBody", {}).get("content", {}).get("application/json")
    if body:
        lines += ["", "**Request body**", "", *_fields(body["schema"], schemas)]
        lines += _example(body["schema"], schemas, "request")
    for status, answer in sorted(operation.get("responses", {}).items()):
        if status.startswith("2"):
            schema = answer.get("content", {}).get("application/json", {}).get("schema", {})
            lines += ["", f"**Response {status}**: {answer.get('description', '')}", ""]
            lines += _fields(schema, schemas)
            lines += _example(schema, schemas, "response")
    errors = [(s, a) for s, a in sorted(operation.get("responses", {}).items()) if s[0] in "45"]
    if errors:
        lines += ["", "**Errors** (problem details, `application/problem+json`)", ""]
        lines += [f"- `{status}`: {answer.get('description', '')}" for status, answer in errors]
    return "\n".join(lines)


def _resolve(schema: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = schemas[schema["$ref"].rsplit("/", 1)[-1]]
    if "anyOf" in schema:  # an optional body: the schema that is not null
        options = [s for s in schema["anyOf"] if s.get("type") != "null"]
        if len(options) == 1:
            return _resolve(options[0], schemas)
    return schema


def _schema_type(schema: dict[str, Any], schemas: dict[str, Any]) -> str:
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " or ".join(_schema_type(s, schemas) for s in schema["anyOf"])
    if schema.get("type") == "array":
        return f"list of {_schema_type(schema.get('items', {}), schemas)}"
    if "enum" in schema:
        return "one of " + ", ".join(f"`{value}`" for value in schema["enum"])
    return str(schema.get("type", "any"))


def _fields(schema: dict[str, Any], schemas: dict[str, Any]) -> list[str]:
    resolved = _resolve(schema, schemas)
    if resolved.get("type") == "array":
        item = _schema_type(resolved.get("items", {}), schemas)
        return [f"A JSON list of {item}."]
    properties = resolved.get("properties")
    if not properties:
        return ["A JSON object."]
    required = set(resolved.get("required", []))
    rows = ["| field | type | required | what it is |", "|---|---|---|---|"]
    for name, field in properties.items():
        kind = _cell(_schema_type(field, schemas))
        what = _cell(field.get("description", ""))
        rows.append(f"| `{name}` | {kind} | {'yes' if name in required else 'no'} | {what} |")
    return rows


def _example(schema: dict[str, Any], schemas: dict[str, Any], what: str) -> list[str]:
    examples = _resolve(schema, schemas).get("examples")
    if not examples:
        return []
    return ["", f"Example {what}:", "", "```json", json.dumps(examples[0], indent=2), "```"]


def _problem_types(types: dict[str, str]) -> str:
    rows = ["### Problem types", "",
            "Every error is a problem details document (RFC 9457) whose `type` is one of these "
            "identifiers (not addresses: nothing is fetched from them):", "",
            "| type | what it means |", "|---|---|"]  # fmt: skip
    rows += [
        f"| `urn:mongo-workers:problem:{slug}` | {_cell(text)} |" for slug, text in types.items()
    ]
    return "\n".join(rows)
