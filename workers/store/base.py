"""The connection, the server clock, error translation and pipeline expressions.

Times that decide ownership (leases) are computed by the server from `$$NOW`;
times that are only written or used as index bounds come from `now()`, this
node's clock corrected by the measured offset to the server's clock, so a node
with a skewed clock neither delays nor hurries jobs.
"""

from __future__ import annotations

import contextlib
import decimal
import functools
import itertools
import logging
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any, ParamSpec, TypeVar

import bson
import pymongo
from bson import ObjectId
from pymongo import ReadPreference
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import ConfigurationError, ConnectionFailure, OperationFailure, PyMongoError

from workers.errors import (
    DatabaseUnavailable,
    ServerTooOld,
    ServerUnsupported,
    SettingsError,
    StoreError,
    WorkersError,
)
from workers.record import (
    DATA_LIMIT,
    HORIZON,
    LOG_KEPT,
    LOG_LIMIT,
    READY,
    SCHEDULED,
    TEXT_LIMIT,
    clipped,
)
from workers.store.profile import ServerProfile, profile_of

P = ParamSpec("P")
T = TypeVar("T")

Document = dict[str, Any]
_log = logging.getLogger("workers.store")

# The oldest server the queue runs on: the queries need 4.4.2 ($isNumber, hello), and on
# 4.4 every update by pipeline (a claim, an outcome, a renewal) writes the whole document
# to the oplog, where 5.0 writes what changed (and 4.4 is out of support since 2024).
MIN_SERVER = "5.0.0"
_CLOCK_RESYNC = 60.0
# mongo.write_concern -> MongoClient options. "auto" (the default) is majority on a replica
# set or behind mongos, where a write only one member holds can be rolled back by a
# failover (a lost push, or a job run twice), and journaled on a standalone: a push that
# returned an id, or an outcome that was recorded, survives a crash of the database.
WRITE_CONCERNS: dict[str, dict[str, Any]] = {
    "journaled": {"w": 1, "journal": True},
    "majority": {"w": "majority", "journal": True},
    "acknowledged": {"w": 1, "journal": False},
}


def translated(method: Callable[P, T]) -> Callable[P, T]:
    """Turn driver errors into our own, so callers never import pymongo."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return method(*args, **kwargs)
        except OperationFailure as exc:
            store = args[0] if args else None
            if not (_hint_gone(exc) and isinstance(store, Connection) and store.forget_hints()):
                raise _ours(method.__name__, exc) from exc
        except (PyMongoError, bson.errors.BSONError) as exc:
            raise _ours(method.__name__, exc) from exc
        # once more, without the hints to indexes that are gone; what the first try wrote is
        # written again under the same conditions (status, owner), which the server checks
        try:
            return method(*args, **kwargs)
        except (PyMongoError, bson.errors.BSONError) as exc:
            raise _ours(method.__name__, exc) from exc

    return wrapper


def _ours(operation: str, exc: Exception) -> WorkersError:
    """A driver's error as ours: unreachable, or refused (naming the operation)."""
    if isinstance(exc, ConnectionFailure):
        first_line = str(exc).split(", Timeout:")[0]
        return DatabaseUnavailable(f"MongoDB is unreachable: {first_line}")
    return StoreError(f"MongoDB refused {operation}: {exc}")


def _hint_gone(exc: OperationFailure) -> bool:
    """The server's answer to a hint naming no index (code 2, BadValue, on MongoDB and on
    SecantusDB alike): the index was dropped under a running service."""
    return exc.code == 2 and "does not correspond to an existing index" in str(exc)


def new_id() -> str:
    """Job ids are ObjectId strings: unique across nodes and sortable by creation."""
    return str(ObjectId())


# what bson.encode raises for a value it cannot store (ValueError: a UUID with no
# representation, a string with a lone surrogate)
ENCODING_ERRORS = (bson.errors.InvalidDocument, OverflowError, TypeError, ValueError)


def bson_problem(value: dict[str, Any]) -> str | None:
    """Why `value` cannot be stored as a BSON document, naming the key path; None if it can."""
    try:
        bson.encode(value)
    except ENCODING_ERRORS as exc:
        path = _first_bad_path(value)
        return f"{path or 'value'}: {exc}{_hint(_at(value, path))}"
    return None


def _at(value: Any, path: str | None) -> Any:
    """The value at a dotted path found by _first_bad_path (None if it cannot be followed)."""
    for part in (path or "").split(".") if path else []:
        try:
            value = value[int(part)] if isinstance(value, (list, tuple)) else value[part]
        except (KeyError, IndexError, ValueError, TypeError):
            return None
    return value


def _hint(bad: Any) -> str:
    """How to store what was refused."""
    if isinstance(bad, (set, frozenset)):
        return "; use a list instead of a set"
    if isinstance(bad, date) and not isinstance(bad, datetime):
        return "; use a datetime, or an ISO-8601 string, instead of a date"
    if isinstance(bad, int):
        return "; MongoDB integers are 64-bit: store a larger number as a string"
    if isinstance(bad, decimal.Decimal):
        return "; store a Decimal as a string (str(value)), or as bson.Decimal128(value)"
    if isinstance(bad, uuid.UUID):
        return "; store a UUID as a string (str(value))"
    if bad is not None and not isinstance(bad, (str, bytes, float, bool, dict, list, tuple)):
        return f"; store the {type(bad).__name__}'s fields as a dict, or its id"
    return ""


def _first_bad_path(value: Any, path: str = "") -> str | None:
    if isinstance(value, dict):
        for key, item in value.items():
            if _bad_key(key):
                return f"{path}{key!r} (keys must be UTF-8 strings without NUL)"
            found = _first_bad_path(item, f"{path}{key}.")
            if found:
                return found
        return None
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = _first_bad_path(item, f"{path}{index}.")
            if found:
                return found
        return None
    try:
        bson.encode({"v": value})
    except ENCODING_ERRORS:
        return path.rstrip(".") or None
    return None


def _bad_key(key: Any) -> bool:
    if not isinstance(key, str) or "\x00" in key:
        return True
    try:
        key.encode("utf-8")  # a lone surrogate ("\ud800") is not UTF-8
    except UnicodeEncodeError:
        return True
    return False


# -- pipeline expressions, robust to whatever a damaged document holds ----------------


def hashable(job_id: Any) -> bool:
    """A damaged document's `_id` may be a document, which cannot be kept in a set or a dict
    key: such a job is completed alone, and never left out of a scan."""
    try:
        hash(job_id)
    except TypeError:
        return False
    return True


def number(field: str) -> Any:
    """`field` if it is a number, else 0: a damaged counter must not make an update fail."""
    return {"$cond": [{"$isNumber": field}, field, 0]}


def appended(field: str, entry: Document, *, literal: bool = True) -> Any:
    """The array `field` (or [] if it is not one) with `entry` appended, stamped by $$NOW;
    past LOG_LIMIT entries, the newest LOG_KEPT: a log cannot grow a job toward 16 MB, and
    only one write in LOG_LIMIT - LOG_KEPT rewrites the array (record.LOG_KEPT).

    `entry` is taken literally (its message clipped, its data bounded) unless
    `literal=False` says it holds expressions.
    """
    value = {"$literal": bounded_entry(entry)} if literal else entry
    stamped = {"$mergeObjects": [value, {"time": "$$NOW"}]}
    grown = {"$concatArrays": [{"$cond": [{"$isArray": field}, field, []]}, [stamped]]}
    full = {"$gt": [{"$size": "$$grown"}, LOG_LIMIT]}
    trimmed = {"$cond": [full, {"$slice": ["$$grown", -LOG_KEPT]}, "$$grown"]}
    return {"$let": {"vars": {"grown": grown}, "in": trimmed}}


def bounded_entry(entry: Document) -> Document:
    """A log entry with its message clipped and oversized data replaced by a note."""
    bounded = dict(entry)
    if isinstance(bounded.get("message"), str):
        bounded["message"] = clipped(bounded["message"], TEXT_LIMIT)
    data = bounded.get("data")
    if data:
        size = len(bson.encode({"data": data}))
        if size > DATA_LIMIT:
            bounded["data"] = {"dropped": f"{size} bytes of data, over the {DATA_LIMIT} kept"}
    return bounded


def released_key() -> Any:
    """`unique_key` once the job finished: an app's key is free again (null); cron's tick
    key stays, since a tick fires once, ever."""
    return {"$cond": [is_type("string", "$unique"), None, "$unique_key"]}


def is_type(kind: str, field: str) -> Document:
    """An aggregation expression: is `field` of BSON type `kind`?"""
    return {"$eq": [{"$type": field}, kind]}


def after_now(seconds: float) -> Any:
    return {"$add": ["$$NOW", int(seconds * 1000)]}


def ready_or_scheduled(run_at: Any = "$run_at") -> Any:
    """Expression: the status of a job becoming runnable: ready when its `run_at` is within
    HORIZON of the server's clock, else scheduled (record.due_status). Compared as
    milliseconds, as `before_now`."""
    horizon = {"$add": [{"$toLong": "$$NOW"}, int(HORIZON.total_seconds() * 1000)]}
    later = {"$gt": [{"$toLong": run_at}, horizon]}
    return {"$cond": [later, SCHEDULED, READY]}


def before_now(field: str) -> Any:
    """Expression: the date in `field` is earlier than the server's $$NOW.

    Compared as milliseconds ($toLong), which is the same on MongoDB and works
    on SecantusDB, whose expression engine compares a date with $$NOW as equal.
    """
    return {"$lt": [{"$toLong": field}, {"$toLong": "$$NOW"}]}


def wall_clock() -> float:
    """This node's clock, in seconds since the epoch: the one place the store reads it."""
    return time.time()


class Connection:
    """One MongoClient and the collections of one database.

    The runtime's traffic (claims, outcomes, cron) has this client to itself; the
    app's own queries get a client of their own (`app_database`), and the heartbeat
    another (`for_heartbeat`), so neither can take the connections the other needs.
    """

    def __init__(
        self,
        url: str,
        database: str,
        *,
        prefix: str = "workers",
        timeout: float = 10.0,
        pool_size: int = 8,
        app_name: str = "workers",
        write_concern: str = "journaled",
        operation_timeout: float | None = None,
        retention: dict[str, float | None] | None = None,
    ) -> None:
        ms = int(timeout * 1000)
        bounded: dict[str, Any] = {}
        if operation_timeout:  # CSOT: pool wait, server selection and retries included
            bounded["timeoutMS"] = int(operation_timeout * 1000)
        try:  # a bad port, option or escape in the URL (InvalidURI is a ConfigurationError)
            self._client: pymongo.MongoClient[Document] = pymongo.MongoClient(
                url,
                tz_aware=True,
                appname=app_name,
                maxPoolSize=pool_size,
                serverSelectionTimeoutMS=ms,
                connectTimeoutMS=ms,
                socketTimeoutMS=ms * 3,
                retryWrites=True,
                **WRITE_CONCERNS[_provisional(write_concern)],
                **bounded,
            )
        except (ConfigurationError, ValueError) as exc:
            raise SettingsError(
                f"the MongoDB URL (mongo.url or MONGO_URL) is not valid: {exc}"
            ) from None
        self._prefix, self._app_name = prefix, app_name
        self._pool_size, self._write_concern = pool_size, write_concern
        self._app_client: pymongo.MongoClient[Document] | None = None
        self._app_lock = threading.Lock()
        self.url = url
        self.timeout = timeout
        #: seconds a finished job is kept, by status (None: for ever)
        self.retention: dict[str, float | None] = dict(retention or {})
        self._bind(database)
        self._profile: ServerProfile | None = None
        #: our index name -> the name of the index serving it (an equivalent a DBA made)
        self.index_names: dict[str, str] = {}
        #: ours whose index is gone (dropped under the running service): queried unhinted
        self.unhinted: frozenset[str] = frozenset()
        self._info: Document | None = None
        self.replica_set: str | None = None  # the server's, read by check_server
        self._offset: timedelta | None = None
        self._synced_at = 0.0
        self._clock_lock = threading.Lock()
        self._sync_failure: tuple[float, WorkersError] | None = None

    def _bind(self, database: str) -> None:
        """The collections, at the primary and under the write concern in force."""
        # the queue's own reads go to the primary whatever the URL's readPreference: a claim
        # read back from a lagging secondary strands the jobs it took until their lease ends
        concern = pymongo.WriteConcern(**_as_write_concern(self._write_concern, self.timeout))
        self.db: Database[Document] = self._client.get_database(
            database, read_preference=ReadPreference.PRIMARY, write_concern=concern
        )
        prefix = self._prefix
        self.jobs: Collection[Document] = self.db[f"{prefix}.jobs"]
        self.nodes: Collection[Document] = self.db[f"{prefix}.nodes"]
        self.cron: Collection[Document] = self.db[f"{prefix}.cron"]
        self.metrics: Collection[Document] = self.db[f"{prefix}.metrics"]
        self.web: Collection[Document] = self.db[f"{prefix}.web"]
        # one document per type under a cluster-wide limit (limits.py)
        self.limits: Collection[Document] = self.db[f"{prefix}.limits"]
        # candidate lists shared by claimers (claims.py): hints, so not journaled (a list lost
        # in a crash costs one scan)
        self.candidates: Collection[Document] = self.db.get_collection(
            f"{prefix}.candidates", write_concern=pymongo.WriteConcern(w=1, j=False)
        )

    @translated
    def ping(self, seconds: float) -> None:
        """Raise DatabaseUnavailable unless the server answers within `seconds`, server
        selection included (the health checks: a probe has a deadline of its own)."""
        with pymongo.timeout(seconds):
            self._client.admin.command("ping")

    @translated
    def check_server(self) -> str:
        """At boot: refuse a server too old for the queries (`check_version`), and settle a
        write concern of "auto" by what `hello` says. Returns the write concern in force."""
        self.check_version()
        hello = self._client.admin.command("hello")
        self.replica_set = hello.get("setName")
        if self._write_concern == "auto":
            self._write_concern = auto_write_concern(hello)
            self._bind(self.db.name)
        warning = arbiter_warning(hello, self._write_concern)
        if warning:
            _log.warning(warning)
        return self._write_concern

    def where(self) -> str:
        """Which server and database this store uses, for the boot log: the hosts of the
        URL, the replica set (after `check_server`), the database and the user, never the
        password."""
        user = urllib.parse.urlsplit(self.url).netloc.rpartition("@")[0]
        hosts = _hosts(self.url)
        name = urllib.parse.unquote(user.split(":", 1)[0]) if user else "none"
        replica = f", replica set {self.replica_set}" if self.replica_set else ""
        version = self._build_info().get("version", "?")
        return f"{hosts}{replica} (version {version}), database {self.db.name}, user {name}"

    @translated
    def has_transactions(self) -> bool:
        """Does the server run transactions (a replica set member or mongos)?"""
        return replicated(self._client.admin.command("hello"))

    @property
    def write_concern(self) -> str:
        """The write concern in force ("auto" until `check_server`)."""
        return self._write_concern

    @property
    def profile(self) -> ServerProfile:
        """The server's profile (profile.py), read once from `buildInfo`."""
        if self._profile is None:
            self._profile = profile_of(self._build_info())
        return self._profile

    @translated
    def check_version(self) -> str:
        """The server's version; ServerTooOld below `MIN_SERVER` (what the queries use),
        ServerUnsupported for an emulation of MongoDB's API (told by its host names, as
        pymongo tells them: both answer buildInfo with a MongoDB version)."""
        emulation = emulated_by(self.url)
        if emulation:
            raise ServerUnsupported(
                f"the database at {_hosts(self.url)} is {emulation}, which is not MongoDB: it "
                "emulates a part of MongoDB's API and differs where the queue depends on it "
                "(update pipelines with $$NOW, partial indexes, change streams, "
                "transactions); run the queue on MongoDB 5.0 or newer"
            )
        version = str(self._build_info().get("version", ""))
        too_old = version_tuple(version) < version_tuple(MIN_SERVER)
        if too_old:
            raise ServerTooOld(
                f"MongoDB {version or '(no version)'} is older than {MIN_SERVER}, the oldest "
                f"this version of workers runs on (on 4.4 each update by pipeline writes the "
                f"whole document to the oplog); 6.0 or newer is recommended"
            )
        return version

    def _build_info(self) -> Document:
        if self._info is None:
            self._info = self._client.admin.command("buildInfo")
        return self._info

    def close(self) -> None:
        self._client.close()
        if self._app_client is not None:
            self._app_client.close()

    def app_database(self) -> Database[Document]:
        """The same database on a client of the app's own (`mongo.pool_size` connections,
        made on first use): the app's slow queries cannot starve the runtime's writes."""
        with self._app_lock:
            if self._app_client is None:
                # the URL's write concern, where it names one: the app's writes are its own
                concern = (
                    {}
                    if _sets_write_concern(self.url)
                    else WRITE_CONCERNS[_provisional(self._write_concern)]
                )
                self._app_client = pymongo.MongoClient(
                    self.url,
                    tz_aware=True,
                    appname=f"{self._app_name}-app",
                    maxPoolSize=self._pool_size,
                    serverSelectionTimeoutMS=int(self.timeout * 1000),
                    **concern,
                )
            return self._app_client[self.db.name]

    def index(self, name: str) -> str:
        """The index serving ours named `name`: a hint names it (indexes.py)."""
        return self.index_names.get(name, name)

    def hint(self, name: str) -> str | None:
        """The hint of a query: the index serving ours, none if it is gone (`forget_hints`)."""
        return None if name in self.unhinted else self.index(name)

    def scan_hint(self, name: str) -> str | None:
        """The hint of a scan: the index, or none where the server profile plans better."""
        return self.hint(name) if self.profile.hint_scans else None

    def scan_hint_option(self, name: str) -> dict[str, Any]:
        """`scan_hint` as keyword arguments: a count refuses `hint=None`."""
        hint = self.scan_hint(name)
        return {"hint": hint} if hint else {}

    def forget_hints(self) -> bool:
        """After a hint named an index that is gone: read which are, and query those
        unhinted until a boot builds them again. False if none newly is (do not retry)."""
        return False  # the store's indexes (indexes.py) know which are ours

    def for_heartbeat(self, lease: float) -> Any:
        """A store of the same class on one connection of its own, every operation bounded by
        lease/6 (pool wait and retries included): a beat cannot queue behind the jobs'
        traffic, and a beat sent into a partition fails in time to try again."""
        store = type(self)(
            self.url,
            self.db.name,
            prefix=self._prefix,
            timeout=self.timeout,
            pool_size=1,
            app_name=f"{self._app_name}-heartbeat",
            write_concern=self._write_concern,
            operation_timeout=max(0.5, lease / 6),
            retention=self.retention,
        )
        store.index_names, store.unhinted = dict(self.index_names), self.unhinted
        return store

    def finished(self, status: str) -> Document:
        """What every write that finishes a job also sets: when it finished, the release of
        its unique key (another job may take the key now), and when the TTL index on
        `expire_at` removes it (retention by status)."""
        keep = self.retention.get(status)
        return {
            "finished": "$$NOW",
            "unique_key": released_key(),
            "expire_at": after_now(keep) if keep else None,
        }

    def _explain(self, command: Document, verbosity: str = "queryPlanner") -> Document:
        """The server's plan for `command`, for the tests that keep hot paths on an index."""
        return self.db.command("explain", command, verbosity=verbosity)

    def now(self) -> datetime:
        """The database server's clock, estimated without a round trip.

        Only the first call waits for a measurement; a stale offset is measured
        again in the background, so a push never pays for a clock round trip."""
        if self._offset is None:
            self._first_sync()
        elif time.monotonic() - self._synced_at > _CLOCK_RESYNC:
            self._resync_in_background()
        offset = self._offset
        if offset is None:  # _first_sync measures it or raises
            raise DatabaseUnavailable("the database clock was not measured")
        return datetime.fromtimestamp(wall_clock(), UTC) + offset

    def now_or_none(self) -> datetime | None:
        """`now()`, or None when the clock cannot be read (the database is away)."""
        try:
            return self.now()
        except WorkersError:
            return None

    def seconds_until(self, moment: datetime, otherwise: float) -> float:
        """Seconds from the database clock's now to `moment` (negative once it passed), or
        `otherwise` when the clock cannot be read: the caller then looks again that late."""
        try:
            return (moment - self.now()).total_seconds()
        except WorkersError:
            return otherwise

    def _first_sync(self) -> None:
        """One thread measures; threads that were waiting for it take its answer, an error
        included, so k pushes during an outage fail after one timeout, not k of them."""
        asked = time.monotonic()
        with self._clock_lock:
            if self._offset is not None:
                return
            failed = self._sync_failure
            if failed is not None and failed[0] >= asked:  # its answer, as an error of our own
                raise type(failed[1])(str(failed[1]))
            try:
                self._measure()
            except WorkersError as exc:
                self._sync_failure = (time.monotonic(), exc)
                raise

    def _resync_in_background(self) -> None:
        if not self._clock_lock.acquire(blocking=False):
            return  # a measurement is under way
        self._synced_at = time.monotonic()  # one resync per period, even if this one fails
        self._clock_lock.release()
        threading.Thread(target=self._resync_quietly, name="clock-sync", daemon=True).start()

    def _resync_quietly(self) -> None:
        with contextlib.suppress(WorkersError):  # the old offset stands; the next period retries
            self.sync_clock()

    def sync_clock(self) -> timedelta:
        """Measure this node's clock against the server's (hello.localTime)."""
        with self._clock_lock:
            return self._measure()

    @translated
    def _measure(self) -> timedelta:
        """One round trip (the caller holds the clock lock)."""
        before = wall_clock()
        reply = self._client.admin.command("hello")
        after = wall_clock()
        server = reply["localTime"]
        if server.tzinfo is None:
            server = server.replace(tzinfo=UTC)
        local = datetime.fromtimestamp((before + after) / 2, UTC)
        self._offset = server - local
        self._synced_at = time.monotonic()
        return self._offset


def version_tuple(version: str) -> tuple[int, ...]:
    """ "7.0.12" -> (7, 0, 12); a suffix ("-rc1") and what does not parse count as 0."""
    parts = []
    for part in version.split(".")[:3]:
        digits = "".join(itertools.takewhile(str.isdigit, part))
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def auto_write_concern(hello: Document) -> str:
    """ "majority" where a failover can roll back a write one member holds (a replica set
    member reports `setName`, a mongos `msg: isdbgrid`), else "journaled"."""
    return "majority" if replicated(hello) else "journaled"


def replicated(hello: Document) -> bool:
    """A replica set member (`setName`) or a mongos (`msg: isdbgrid`), as `hello` says."""
    return bool(hello.get("setName")) or hello.get("msg") == "isdbgrid"


def _provisional(write_concern: str) -> str:
    """The client's write concern until "auto" is settled: the collections carry their own."""
    return "journaled" if write_concern == "auto" else write_concern


def _as_write_concern(write_concern: str, timeout: float | None = None) -> dict[str, Any]:
    """The collections' write concern; a majority one waits at most `timeout` s for the
    other members (with none, a primary-secondary-arbiter set whose secondary is down
    held every write until the socket timed out), then fails as a refused write."""
    options = WRITE_CONCERNS[_provisional(write_concern)]
    concern: dict[str, Any] = {"w": options["w"], "j": options["journal"]}
    if options["w"] == "majority" and timeout:
        concern["wtimeout"] = int(timeout * 1000)
    return concern


# The most values of an `$in` a sorted scan may explode into, one index range each, to
# read in index order (MongoDB's internalQueryMaxScansToExplode): past it, the planner
# sorts every match in memory. A scan over more types goes in runs of this many.
MAX_EXPLODED = 200


def type_runs(types: list[str]) -> list[list[str]]:
    """`types` in runs of at most MAX_EXPLODED (one run if they fit)."""
    return [types[at : at + MAX_EXPLODED] for at in range(0, len(types), MAX_EXPLODED)] or [[]]


def _hosts(url: str) -> str:
    """The URL's hosts, never its user or password."""
    return urllib.parse.urlsplit(url).netloc.rpartition("@")[2]


_EMULATIONS = {
    ".docdb.amazonaws.com": "Amazon DocumentDB",
    ".docdb-elastic.amazonaws.com": "Amazon DocumentDB",
    ".cosmos.azure.com": "Azure Cosmos DB",
}


def emulated_by(url: str) -> str | None:
    """The product a URL's hosts name when it is an emulation of MongoDB, else None."""
    for host in _hosts(url).lower().split(","):
        name = host.rsplit(":", 1)[0] if not host.startswith("[") else host
        for suffix, product in _EMULATIONS.items():
            if name.endswith(suffix):
                return product
    return None


def arbiter_warning(hello: Document, write_concern: str) -> str | None:
    """What to tell about a replica set with an arbiter under majority writes: while a
    data-bearing member is down, the majority cannot acknowledge, and every write waits
    for its wtimeout and fails. None where that cannot happen."""
    arbiters = hello.get("arbiters") or []
    if not arbiters or write_concern != "majority":
        return None
    return (
        f"replica set {hello.get('setName')} has an arbiter ({', '.join(map(str, arbiters))}): "
        "while one of its data-bearing members is down, majority writes cannot be "
        "acknowledged and fail after mongo.timeout seconds; replace the arbiter with a "
        "data-bearing member, or set mongo.write_concern to journaled (a failover may then "
        "roll back the last writes)"
    )


def _sets_write_concern(url: str) -> bool:
    """Whether the URL names a write concern (`w`, `journal`, `wtimeoutMS`): the app's own
    client keeps it."""
    query = urllib.parse.urlsplit(url).query.lower()
    names = {part.split("=", 1)[0] for part in query.split("&") if part}
    return bool(names & {"w", "journal", "j", "wtimeoutms"})
