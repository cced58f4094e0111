"""Typed job params: a job class's annotated class fields, checked by a pydantic model.

    class LoadRetentionJob(Job):
        project_id: str
        days: int = 30

A class with such fields refuses a missing, unknown or mistyped param where the job is
made (`LoadRetentionJob(project_id=1)`), by name, before anything is written; the HTTP
push checks the same model, and `/openapi.json` publishes its JSON Schema. What is stored
is the model's JSON form (dates as ISO strings, enums as values): readable by a worker in
any language, and read back by the class in pydantic's lax mode, so a stored date becomes a
`datetime` again. A class without annotated fields keeps free-form params.

Not params: `ClassVar`s, names with a leading underscore, and what `Job` itself defines
(its settings such as `timeout`, its methods and attributes).
"""

from __future__ import annotations

import inspect
import typing
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from workers.errors import PushError, WorkersError


class ParamsError(PushError, ValueError):
    """Params that do not fit the job class's fields; the message names the class and field
    (a push refused: 422 over HTTP)."""


class Params(BaseModel):
    """The base of every generated params model: unknown params are refused."""

    model_config = ConfigDict(extra="forbid")


def params_model(cls: type, reserved: frozenset[str]) -> type[Params] | None:
    """The params model of a job class (its annotated fields, its bases' included), or None
    when it declares none."""
    fields: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        for name, hint in _own_hints(klass).items():
            if name.startswith("_") or name in reserved or _is_classvar(hint):
                continue
            fields[name] = (hint, klass.__dict__.get(name, ...))
    if not fields:
        return None
    return create_model(f"{cls.__name__}Params", __base__=Params, **fields)


def _own_hints(klass: type) -> dict[str, Any]:
    """The annotations `klass` itself declares, resolved (`from __future__ import
    annotations` makes them strings); none of `Job`'s own."""
    own = inspect.get_annotations(klass)
    if not own or klass.__module__ == "workers.job":
        return {}
    try:
        hints = typing.get_type_hints(klass, include_extras=True)
    except (NameError, TypeError) as exc:
        raise WorkersError(f"{klass.__qualname__}: cannot read its params' types: {exc}") from None
    return {name: hints[name] for name in own if name in hints}


def _is_classvar(hint: Any) -> bool:
    return hint is ClassVar or typing.get_origin(hint) is ClassVar


def check(
    job_type: str, model: type[Params], given: dict[str, Any], *, strict: bool
) -> tuple[Params, dict[str, Any]]:
    """The checked values and their stored (JSON) form; ParamsError naming what is wrong.
    `strict`: as given in Python (a push); lax: as read back from storage or JSON."""
    try:
        values = model.model_validate(given, strict=strict)
    except ValidationError as exc:
        raise ParamsError(f"{job_type} params: {describe(exc)}") from None
    return values, values.model_dump(mode="json")


def describe(exc: ValidationError) -> str:
    """Each problem as `field: what` (pydantic's own words), joined."""
    problems = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"]) or "params"
        what = "not a field of this job" if error["type"] == "extra_forbidden" else error["msg"]
        problems.append(f"{where}: {what}")
    return "; ".join(problems)


def schema(model: type[Params]) -> dict[str, Any]:
    """The JSON Schema of a type's params (what a client in any language sends)."""
    return model.model_json_schema()
