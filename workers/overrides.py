"""WORKERS_<SECTION>__<KEY> environment variables, laid over settings.json.

Deployments pass configuration as environment (a container's env, a Kubernetes
ConfigMap or Secret), so every key of the settings can be set that way:
`WORKERS_CLUSTER__COUNT=3`, `WORKERS_WORKERS__QUEUE__LEASE=20`,
`WORKERS_MONGO__URL=...`. `WORKERS_MONGO__URL_FILE=/run/secrets/mongo-url` reads
the value from a mounted file instead. pydantic-settings decodes each value by
the type of its key (numbers, booleans, JSON lists and objects); the settings
model then validates it like a value from the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_settings import EnvSettingsSource
from pydantic_settings import SettingsError as DecodeError

from workers.errors import SettingsError

PREFIX = "WORKERS_"
DELIMITER = "__"
FILE_SUFFIX = "_FILE"

Path_ = tuple[str, ...]


@dataclass(frozen=True)
class Overrides:
    """The values the environment sets (nested like the file) and which variable set each."""

    values: dict[str, Any] = field(default_factory=dict)
    variables: dict[Path_, str] = field(default_factory=dict)

    def variable_for(self, location: Iterable[Any]) -> str | None:
        """The variable that set this key or a section holding it (None: from the file)."""
        keys = tuple(str(part) for part in location)
        for length in range(len(keys), 0, -1):
            if keys[:length] in self.variables:
                return self.variables[keys[:length]]
        return None


class _Source(EnvSettingsSource):
    """pydantic-settings' environment reader, fed one variable at a time, so a value it
    cannot decode is reported under its own name."""

    def __init__(self, model: type[BaseModel], variables: Mapping[str, str]) -> None:
        self._given = {name.lower(): value for name, value in variables.items()}
        super().__init__(
            model,  # type: ignore[arg-type]  # any model with fields will do as the shape
            case_sensitive=False,
            env_prefix=PREFIX,
            env_nested_delimiter=DELIMITER,
        )

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return self._given


def read(model: type[BaseModel], environ: Mapping[str, str] | None = None) -> Overrides:
    """The overrides in `environ` (os.environ by default) for a settings `model`.

    A variable that names no key (`WORKERS_CLUSTR__COUNT`), a value that cannot be
    decoded, or a `_FILE` that cannot be read is an error naming the variable.
    """
    given = _with_files(model, os.environ if environ is None else environ)
    values: dict[str, Any] = {}
    variables: dict[Path_, str] = {}
    for name, (plain, path, value) in sorted(given.items()):
        try:
            decoded = _Source(model, {plain: value})()
        except DecodeError as exc:
            # a `_FILE` holds a secret: its content is never quoted, not even in an error
            shown = "the file's content" if _reads_file(model, name) else repr(value)
            reason = "" if _reads_file(model, name) else f": {exc.__cause__ or exc}"
            raise SettingsError(
                f"{name}: cannot decode {shown} for {'.'.join(path)}{reason}"
            ) from None
        _merge(values, decoded)
        variables[path] = name
    return Overrides(values, variables)


def is_override(model: type[BaseModel], name: str) -> bool:
    """Whether an environment variable is meant as a settings override: it has a section
    (`WORKERS_X__Y`) or names a top-level key (`WORKERS_MODE`, `WORKERS_JOBS_FILE`).
    Other `WORKERS_` variables (`WORKERS_SETTINGS`) are not settings keys."""
    if not name.upper().startswith(PREFIX):
        return False
    rest = name[len(PREFIX) :].lower()
    if rest.endswith(FILE_SUFFIX.lower()) and _key_path(model, name[: -len(FILE_SUFFIX)]):
        rest = rest[: -len(FILE_SUFFIX)]
    return DELIMITER in rest.strip("_") or rest in _top_level_keys(model)


def merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `over` laid on it, section by section (a copy; neither is changed)."""
    merged = {key: value for key, value in base.items()}
    _merge(merged, over)
    return merged


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> None:
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), Mapping):
            inner = dict(base[key])
            _merge(inner, value)
            base[key] = inner
        else:
            base[key] = value


def _with_files(
    model: type[BaseModel], environ: Mapping[str, str]
) -> dict[str, tuple[str, Path_, str]]:
    """Each override variable -> (the name pydantic-settings sees: `_FILE` dropped, its key
    path, its value), `_FILE` forms read."""
    given: dict[str, tuple[str, Path_, str]] = {}
    for name, value in environ.items():
        if not is_override(model, name):
            continue
        reads_file = _reads_file(model, name)
        plain = name[: -len(FILE_SUFFIX)] if reads_file else name
        path = _key_path(model, plain)
        if path is None:
            raise SettingsError(f"{name}: no such setting ({_known(model)})")
        if reads_file and plain in environ:
            raise SettingsError(f"{name} and {plain} are both set: set one of them")
        value = _read_secret(name, value) if reads_file else value
        value = _as_json_list(value) if _is_list_of_names(model, path) else value
        given[name] = (plain, path, value)
    return given


def _reads_file(model: type[BaseModel], name: str) -> bool:
    """`WORKERS_X__Y_FILE` for a key `x.y`: the value is read from that file."""
    return (
        name.upper().endswith(FILE_SUFFIX)
        and _key_path(model, name[: -len(FILE_SUFFIX)]) is not None
    )


def _is_list_of_names(model: type[BaseModel], path: Path_) -> bool:
    shape: Any = model
    for key in path:
        shape = shape.model_fields[key].annotation
    return bool(shape in (list[str], list[str] | None))


def _as_json_list(value: str) -> str:
    """`a,b` -> `["a", "b"]`: a list of names may be written plainly (`WORKERS_JOBS=myjobs`)."""
    if value.lstrip().startswith("["):
        return value
    return json.dumps([part.strip() for part in value.split(",") if part.strip()])


def _read_secret(name: str, path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise SettingsError(f"{name}: cannot read {path}: {exc.strerror}") from None


def _key_path(model: type[BaseModel], name: str) -> Path_ | None:
    """WORKERS_WORKERS__QUEUE__LEASE -> ("workers", "queue", "lease"), or None if no such key."""
    if not name.upper().startswith(PREFIX):
        return None
    keys = tuple(name[len(PREFIX) :].lower().split(DELIMITER))
    shape: Any = model
    for key in keys:
        fields = getattr(shape, "model_fields", None) if isinstance(shape, type) else None
        if not fields or key not in fields:
            return None
        shape = fields[key].annotation
    return keys


def _top_level_keys(model: type[BaseModel]) -> set[str]:
    return {name for name, info in model.model_fields.items() if not _is_section(info.annotation)}


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _known(model: type[BaseModel]) -> str:
    sections = ", ".join(
        f"{PREFIX}{name.upper()}{DELIMITER}..."
        if _is_section(info.annotation)
        else f"{PREFIX}{name.upper()}"
        for name, info in model.model_fields.items()
    )
    return f"the settings variables are {sections}"
