"""The indexes the service needs, declared once: boot, `workers db indexes` and the tests
read the same list.

Beside a DBA an index of ours may already exist under another name (made by hand, or by
Atlas's Performance Advisor). MongoDB refuses a second index on the same keys and options
(code 85, IndexOptionsConflict) and one of the same name with other keys or options (86,
IndexKeySpecsConflict), so the existing indexes are read first and compared here, on every
server alike: an equivalent index is used under its own name (the hints follow it), a TTL
of ours that changed is updated with `collMod`, and anything else under our name stops the
boot with one line that says what is there, what is needed and how to fix it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import pymongo
from pymongo.errors import ExecutionTimeout, NetworkTimeout, OperationFailure

from workers.errors import IndexBuildTimeout, IndexConflict, IndexesMissing
from workers.store.base import Connection, Document, translated

RETIRE_AFTER = 600.0  # seconds since a node of another version last beat
_UNBOUNDED = 24 * 3600.0  # seconds a build with no time limit may take (not the socket's)
_log = logging.getLogger("workers.store")
_CONFLICT_CODES = {85, 86}  # IndexOptionsConflict, IndexKeySpecsConflict

State = Literal["present", "equivalent", "ttl", "conflict", "missing"]


@dataclass(frozen=True)
class IndexSpec:
    """One index of ours: the collection (an attribute of the store), name, keys, options."""

    collection: str
    name: str
    keys: tuple[tuple[str, int], ...]
    unique: bool = False
    sparse: bool = False
    partial: Document | None = field(default=None, hash=False)
    ttl: int | None = None  # expireAfterSeconds

    def options(self) -> Document:
        found: Document = {"unique": self.unique or None, "sparse": self.sparse or None}
        found.update(partialFilterExpression=self.partial, expireAfterSeconds=self.ttl)
        return {key: value for key, value in found.items() if value is not None}

    def definition(self) -> Document:
        """As `createIndexes` takes it (and `listIndexes` shows it)."""
        return {"key": dict(self.keys), "name": self.name, **self.options()}

    def same_keys(self, info: Document) -> bool:
        return list(dict(info["key"]).items()) == list(self.keys)

    def serves_as(self, info: Document, *, ttl: bool = True) -> bool:
        """Whether the existing index `info` answers our queries as ours would: the same keys
        and options, no collation (our queries use none), not hidden from the planner."""
        if not self.same_keys(info) or info.get("collation") or info.get("hidden"):
            return False
        theirs = {
            "unique": bool(info.get("unique")),
            "sparse": bool(info.get("sparse")),
            "partialFilterExpression": _plain(info.get("partialFilterExpression")),
            "expireAfterSeconds": info.get("expireAfterSeconds") if ttl else None,
        }
        ours = {
            "unique": self.unique,
            "sparse": self.sparse,
            "partialFilterExpression": _plain(self.partial),
            "expireAfterSeconds": self.ttl if ttl else None,
        }
        return theirs == ours


@dataclass(frozen=True)
class IndexState:
    """How one index of ours stands on the server, and the index that serves it if any."""

    spec: IndexSpec
    state: State
    existing: Document | None = None

    @property
    def serving(self) -> str | None:
        """The name the hints use: ours, or the equivalent index a DBA made."""
        if self.state in ("present", "ttl"):
            return self.spec.name
        if self.state == "equivalent" and self.existing is not None:
            return str(self.existing["name"])
        return None

    def line(self, namespace: str) -> str:
        """One line for `workers db indexes`."""
        where = f"{namespace} {self.spec.name}: {_shown(self.spec.definition())}"
        existing = _shown(_listed(self.existing)) if self.existing else ""
        return (
            where
            + {
                "present": " - present",
                "equivalent": f" - served by {existing}",
                "ttl": f" - present with another TTL ({existing}): `--create` updates it",
                "conflict": f" - CONFLICT: the server has {existing}",
                "missing": " - missing",
            }[self.state]
        )


def state_of(spec: IndexSpec, existing: Iterable[Document]) -> IndexState:
    """Ours by name first; else an equivalent under any name; else missing."""
    listed = list(existing)
    named = next((info for info in listed if info.get("name") == spec.name), None)
    if named is not None:
        if spec.serves_as(named):
            return IndexState(spec, "present", named)
        if spec.serves_as(named, ttl=False) and spec.ttl is not None:
            return IndexState(spec, "ttl", named)
        return IndexState(spec, "conflict", named)
    same = next((info for info in listed if spec.serves_as(info)), None)
    if same is not None:
        return IndexState(spec, "equivalent", same)
    return IndexState(spec, "missing")


def conflict_message(namespace: str, spec: IndexSpec, existing: Document) -> str:
    """The one line that stops the boot: what is there, what we need, and the fix."""
    name = existing.get("name", spec.name)
    return (
        f'index "{name}" on {namespace} is {_shown(_listed(existing))}, where the service '
        f"needs {_shown(spec.definition())}: drop it "
        f'(db.getCollection("{namespace.split(".", 1)[1]}").dropIndex("{name}")) '
        "and boot again, or run `workers db indexes --create` after dropping it"
    )


class IndexQueries(Connection):
    """Checking and building the indexes of `required_indexes()`."""

    def required_indexes(self) -> tuple[IndexSpec, ...]:
        raise NotImplementedError  # the store: workers/store/__init__.py

    def retired_indexes(self) -> tuple[IndexSpec, ...]:
        """Indexes of earlier versions that nothing reads now: dropped on `--create`."""
        return ()

    def other_versions_beating(self, seconds: float) -> set[str]:
        """The versions other than ours of the nodes that beat in the last `seconds`."""
        return set()  # the store's nodes (nodes.py)

    @translated
    def index_states(self) -> list[IndexState]:
        listed: dict[str, list[Document]] = {}
        states = []
        for spec in self.required_indexes():
            if spec.collection not in listed:
                listed[spec.collection] = list(getattr(self, spec.collection).list_indexes())
            states.append(state_of(spec, listed[spec.collection]))
        return states

    def namespace(self, spec: IndexSpec) -> str:
        return str(getattr(self, spec.collection).full_name)

    @translated
    def ensure_indexes(self, *, create: bool = True, time_limit: float | None = None) -> None:
        """At boot: use what serves, build what is missing (within `time_limit` seconds
        each) or, with `create=False`, refuse to start without it; a conflict always stops."""
        states = self.index_states()
        for state in states:
            if state.state == "conflict":
                namespace = self.namespace(state.spec)
                raise IndexConflict(conflict_message(namespace, state.spec, state.existing or {}))
        missing = [state for state in states if state.state == "missing"]
        if missing and not create:
            listed = "; ".join(_shown(s.spec.definition()) for s in missing)
            raise IndexesMissing(
                f"{len(missing)} index(es) missing and mongo.create_indexes is false: {listed}; "
                "create them with `workers db indexes --create` (a user with createIndex)"
            )
        for state in states:
            if state.state == "ttl" and create:
                self._update_ttl(state.spec)
            elif state.state == "ttl":
                _log.warning(
                    "index %s: %s", state.spec.name, state.line(self.namespace(state.spec))
                )
        for collection in dict.fromkeys(state.spec.collection for state in missing):
            self._build([s.spec for s in missing if s.spec.collection == collection], time_limit)
        if missing:
            names = ", ".join(state.spec.name for state in missing)
            _log.info("built %d missing index(es): %s", len(missing), names)
        if create:
            self._drop_retired()
        self._name_serving(states)
        self.unhinted = frozenset()  # built, or the boot refused to go on

    @translated
    def use_indexes(self) -> None:
        """For a command that only reads: hint the indexes that serve ours, creating none
        (those missing: unhinted)."""
        states = self.index_states()
        self._name_serving(states)
        self.unhinted = frozenset(state.spec.name for state in states if state.state == "missing")

    def _name_serving(self, states: list[IndexState]) -> None:
        self.index_names = {state.spec.name: state.serving or state.spec.name for state in states}

    def forget_hints(self) -> bool:
        """A hint named an index that is gone (a DBA dropped it, or the collection with
        it): hint what serves now, query the missing ones unhinted, and warn. A boot (or
        `workers db indexes --create`) builds them again."""
        states = self.index_states()
        gone = frozenset(state.spec.name for state in states if state.state == "missing")
        before = (dict(self.index_names), self.unhinted)
        self._name_serving(states)
        self.unhinted = gone
        if (self.index_names, self.unhinted) == before:
            return False
        _log.warning(
            "an index the queries hint is gone (%s): they run unhinted, and may read far "
            "more, until `workers db indexes --create` or a boot builds it again",
            ", ".join(sorted(gone)) or "renamed",
        )
        return True

    def _build(self, specs: list[IndexSpec], time_limit: float | None) -> None:
        """One collection's missing indexes in one createIndexes (one scan of the collection
        for them all), under a time limit. On a replica set the build commits once a
        majority of the voting members have built it (`commitQuorum: majority`, where the
        default waits for every voting member, so a member that is down would hold it)."""
        collection = getattr(self, specs[0].collection)
        names = ", ".join(spec.name for spec in specs)
        _log.debug(
            "building index(es) %s on %s%s",
            names,
            collection.full_name,
            f", at most {time_limit:g} s" if time_limit else "",
        )
        command: Document = {
            "createIndexes": collection.name,
            "indexes": [spec.definition() for spec in specs],
        }
        if self.replica_set:
            command["commitQuorum"] = "majority"
        # the build may take its whole time limit, however short the client's socket timeout
        # (mongo.timeout x 3): under pymongo.timeout the driver sends maxTimeMS itself and
        # waits on the socket as long
        seconds = time_limit or _UNBOUNDED
        try:
            with pymongo.timeout(seconds):
                self.db.command(command)
        except (ExecutionTimeout, NetworkTimeout) as exc:
            raise IndexBuildTimeout(
                f"index(es) {names} on {collection.full_name} were not built within "
                f"{seconds:g} s (mongo.index_build_timeout): on a replica set a member that "
                "is down or lagging holds the build; bring it back, or build the indexes out of "
                f"band with `workers db indexes --create` ({exc})"
            ) from exc
        except OperationFailure as exc:
            if exc.code not in _CONFLICT_CODES:
                raise
            listed = list(collection.list_indexes())
            spec = next((s for s in specs if state_of(s, listed).state == "conflict"), None)
            spec = spec or next((s for s in specs if _same_keys(s, listed)), specs[0])
            existing = state_of(spec, listed).existing or _same_keys(spec, listed)
            raise IndexConflict(
                conflict_message(collection.full_name, spec, existing or spec.definition())
                + f" (the server answered {exc.code}: {exc.details and exc.details.get('errmsg')})"
            ) from exc

    def _update_ttl(self, spec: IndexSpec) -> None:
        """A TTL of ours that an earlier version set otherwise: changed in place."""
        collection = getattr(self, spec.collection)
        self.db.command(
            "collMod", collection.name, index={"name": spec.name, "expireAfterSeconds": spec.ttl}
        )
        _log.info("index %s on %s: TTL set to %s s", spec.name, collection.full_name, spec.ttl)

    def _drop_retired(self) -> None:
        """Drop the indexes of earlier versions, unless a node of another version beat in
        the last RETIRE_AFTER seconds: it may still hint one (a rolling deploy), and its
        queries would fail. A later boot drops them."""
        retired = self.retired_indexes()
        if retired and (others := self.other_versions_beating(RETIRE_AFTER)):
            _log.info(
                "kept retired index(es) %s: nodes of version %s still beat",
                ", ".join(spec.name for spec in retired),
                ", ".join(sorted(others)),
            )
            return
        for spec in retired:
            collection = getattr(self, spec.collection)
            named = next((i for i in collection.list_indexes() if i["name"] == spec.name), None)
            if named is not None and spec.same_keys(named):
                collection.drop_index(spec.name)
                _log.info("dropped index %s on %s: unused since", spec.name, collection.full_name)

    @translated
    def create_missing_indexes(self, time_limit: float | None = None) -> list[IndexState]:
        """`workers db indexes --create`: build what is missing and fix TTLs; the states after."""
        self.ensure_indexes(create=True, time_limit=time_limit)
        return self.index_states()


def _same_keys(spec: IndexSpec, existing: Iterable[Document]) -> Document | None:
    return next((info for info in existing if spec.same_keys(info)), None)


def _listed(info: Document | None) -> Document:
    """An index as listed, without what every index carries (`v`, `ns`)."""
    kept = {k: v for k, v in (info or {}).items() if k not in ("v", "ns", "background")}
    return {k: dict(v) if k == "key" else v for k, v in kept.items()}


def _plain(value: Any) -> Any:
    """SON and dicts alike, nested, for comparing definitions."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _shown(definition: Document) -> str:
    return json.dumps(_plain(definition), default=str, separators=(", ", ": "))
