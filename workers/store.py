"""Every MongoDB query and index. Nothing else in the package imports pymongo.

The atomic operations are named methods; each docstring says what makes it
atomic and which index serves it. Times that decide ownership (leases) are
computed by the server from `$$NOW`; times that are only written (run_at of a
push) use `now()`, this node's clock corrected by the measured offset to the
server's clock, so a node with a skewed clock neither delays nor hurries jobs.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, ParamSpec, TypeVar

import bson
import pymongo
from bson import ObjectId
from pymongo import ReturnDocument
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import (
    ConnectionFailure,
    DocumentTooLarge,
    DuplicateKeyError,
    OperationFailure,
)

from workers.errors import DatabaseUnavailable, PushError, StoreError
from workers.record import COMPLETED, FAILED, READY, RUNNING

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

CLAIM_INDEX = "claim"
CLAIM_KEYS = [("status", 1), ("priority", 1), ("run_at", 1)]
CLAIM_SORT = [("priority", 1), ("run_at", 1)]
_CLOCK_RESYNC = 60.0


def _translated(method: Callable[P, T]) -> Callable[P, T]:
    """Turn driver errors into our own, so callers never import pymongo."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return method(*args, **kwargs)
        except ConnectionFailure as exc:
            raise DatabaseUnavailable(f"MongoDB is unreachable: {exc}") from exc
        except OperationFailure as exc:
            raise StoreError(f"MongoDB refused {method.__name__}: {exc}") from exc

    return wrapper


def new_id() -> str:
    """Job ids are ObjectId strings: unique across nodes and sortable by creation."""
    return str(ObjectId())


def bson_problem(value: dict[str, Any]) -> str | None:
    """Why `value` cannot be stored as a BSON document, naming the key path; None if it can."""
    try:
        bson.encode(value)
    except (bson.errors.InvalidDocument, OverflowError, TypeError) as exc:
        return f"{_first_bad_path(value) or 'value'}: {exc}"
    return None


def _first_bad_path(value: Any, path: str = "") -> str | None:
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{path}{key!r} (keys must be strings)"
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
    except (bson.errors.InvalidDocument, OverflowError, TypeError):
        return path.rstrip(".") or None
    return None


def _appended(field: str, entry: dict[str, Any]) -> dict[str, Any]:
    """Pipeline expression: `field` with `entry` appended, stamped by the server's clock."""
    stamped = {"$mergeObjects": [{"$literal": entry}, {"time": "$$NOW"}]}
    return {"$concatArrays": [{"$ifNull": [field, []]}, [stamped]]}


class Store:
    """The job, node and lease collections of one database."""

    def __init__(
        self,
        url: str,
        database: str,
        *,
        prefix: str = "workers",
        timeout: float = 10.0,
        pool_size: int = 8,
        app_name: str = "workers",
    ) -> None:
        ms = int(timeout * 1000)
        self._client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            url,
            tz_aware=True,
            appname=app_name,
            maxPoolSize=pool_size,
            serverSelectionTimeoutMS=ms,
            connectTimeoutMS=ms,
            socketTimeoutMS=ms * 3,
            retryWrites=True,
        )
        self.db: Database[dict[str, Any]] = self._client[database]
        self.jobs: Collection[dict[str, Any]] = self.db[f"{prefix}.jobs"]
        self._offset: timedelta | None = None
        self._synced_at = 0.0
        self._clock_lock = threading.Lock()

    def close(self) -> None:
        self._client.close()

    # -- clock ---------------------------------------------------------------

    def now(self) -> datetime:
        """The database server's clock, estimated without a round trip."""
        if self._offset is None or time.monotonic() - self._synced_at > _CLOCK_RESYNC:
            self.sync_clock()
        assert self._offset is not None
        return datetime.now(UTC) + self._offset

    @_translated
    def sync_clock(self) -> timedelta:
        """Measure this node's clock against the server's (hello.localTime)."""
        with self._clock_lock:
            before = time.time()
            reply = self._client.admin.command("hello")
            after = time.time()
            server = reply["localTime"]
            if server.tzinfo is None:
                server = server.replace(tzinfo=UTC)
            local = datetime.fromtimestamp((before + after) / 2, UTC)
            self._offset = server - local
            self._synced_at = time.monotonic()
            return self._offset

    # -- setup ---------------------------------------------------------------

    @_translated
    def ping(self) -> None:
        self._client.admin.command("ping")

    @_translated
    def ensure_indexes(self) -> None:
        """Idempotent; every hot-path query below names the index it relies on."""
        self.jobs.create_index(CLAIM_KEYS, name=CLAIM_INDEX)

    # -- push ----------------------------------------------------------------

    @_translated
    def insert_job(self, document: dict[str, Any]) -> str:
        """One insert: the job exists whole or not at all."""
        try:
            self.jobs.insert_one(document)
        except DuplicateKeyError as exc:
            raise PushError(f"a job with this unique key already exists: {exc}") from exc
        except DocumentTooLarge as exc:
            raise PushError(f"the job document is too large for MongoDB: {exc}") from exc
        return str(document["_id"])

    # -- claim and finish ----------------------------------------------------

    @_translated
    def claim(
        self, owner: str, types: Iterable[str], lease: float, limit: int
    ) -> list[dict[str, Any]]:
        """Take up to `limit` ready, due jobs of `types`, best priority first.

        Each take is one find_one_and_update on the `claim` index (equality on
        status, then the sort keys, then the run_at range): atomic per job, so
        two claimers never take the same job. The lease is computed by the
        server from $$NOW.
        """
        claimed: list[dict[str, Any]] = []
        query = self._claim_query(list(types))
        update = [{"$set": self._claim_update(owner, lease)}]
        while len(claimed) < limit:
            doc = self.jobs.find_one_and_update(
                query,
                update,
                sort=CLAIM_SORT,
                hint=CLAIM_INDEX,
                return_document=ReturnDocument.AFTER,
            )
            if doc is None:
                break
            claimed.append(doc)
        return claimed

    def _claim_query(self, types: list[str]) -> dict[str, Any]:
        return {"status": READY, "run_at": {"$lte": self.now()}, "type": {"$in": types}}

    @staticmethod
    def _claim_update(owner: str, lease: float) -> dict[str, Any]:
        return {
            "status": RUNNING,
            "lease_owner": owner,
            "lease_expires": {"$add": ["$$NOW", int(lease * 1000)]},
            "attempts": {"$add": [{"$ifNull": ["$attempts", 0]}, 1]},
            "started": "$$NOW",
            "updated": "$$NOW",
        }

    @_translated
    def explain_claim(self, types: list[str]) -> dict[str, Any]:
        """The server's plan for the claim, for the index test and `workers doctor`."""
        command = {
            "findAndModify": self.jobs.name,
            "query": self._claim_query(types),
            "sort": dict(CLAIM_SORT),
            "update": [{"$set": self._claim_update("explain", 1)}],
            "hint": CLAIM_INDEX,
        }
        return self.db.command("explain", command, verbosity="queryPlanner")

    @_translated
    def complete(self, job_id: str, owner: str, result: Any) -> bool:
        """Mark a running job completed; refused unless `owner` still holds it."""
        return self._owned_update(
            job_id,
            owner,
            {
                "status": COMPLETED,
                "result": {"$literal": result},
                "finished": "$$NOW",
                "updated": "$$NOW",
                "lease_owner": None,
                "lease_expires": None,
            },
        )

    @_translated
    def fail(self, job_id: str, owner: str, error: dict[str, Any], retry_in: float | None) -> bool:
        """Record a failed attempt: back to ready after `retry_in` seconds, or failed for good."""
        entry = {
            "level": "error",
            "message": f"attempt {error.get('attempt')} failed: "
            f"{error.get('type')}: {error.get('message')}",
        }
        changes: dict[str, Any] = {
            "error": {"$literal": error},
            "log": _appended("$log", entry),
            "updated": "$$NOW",
            "lease_owner": None,
            "lease_expires": None,
        }
        if retry_in is None:
            changes.update(status=FAILED, finished="$$NOW")
        else:
            changes.update(status=READY, run_at={"$add": ["$$NOW", int(retry_in * 1000)]})
        return self._owned_update(job_id, owner, changes)

    @_translated
    def release(self, job_ids: list[str], owner: str) -> int:
        """Hand claimed-but-unstarted jobs back, claimable at once; the attempt is not counted."""
        if not job_ids:
            return 0
        result = self.jobs.update_many(
            {"_id": {"$in": job_ids}, "status": RUNNING, "lease_owner": owner},
            [
                {
                    "$set": {
                        "status": READY,
                        "lease_owner": None,
                        "lease_expires": None,
                        "attempts": {"$max": [0, {"$subtract": ["$attempts", 1]}]},
                        "updated": "$$NOW",
                    }
                }
            ],
        )
        return result.modified_count

    @_translated
    def set_progress(self, job_id: str, owner: str, progress: dict[str, Any]) -> bool:
        return self._owned_update(job_id, owner, {"progress": {"$literal": progress}})

    @_translated
    def add_log(self, job_id: str, owner: str, entry: dict[str, Any]) -> bool:
        """Append to the job's log, stamped with the server's clock."""
        result = self.jobs.update_one(
            {"_id": job_id, "status": RUNNING, "lease_owner": owner},
            [{"$set": {"log": _appended("$log", entry)}}],
        )
        return result.modified_count == 1

    def _owned_update(self, job_id: str, owner: str, changes: dict[str, Any]) -> bool:
        """One conditional update: applies only while the job is running under `owner`."""
        result = self.jobs.update_one(
            {"_id": job_id, "status": RUNNING, "lease_owner": owner},
            [{"$set": changes}],
        )
        return result.modified_count == 1

    # -- reading ---------------------------------------------------------------

    @_translated
    def get_job(self, job_id: str) -> dict[str, Any] | None:
        return self.jobs.find_one({"_id": job_id})

    @_translated
    def count_by_status(self) -> dict[str, int]:
        pipeline = [{"$group": {"_id": "$status", "n": {"$sum": 1}}}]
        return {row["_id"]: row["n"] for row in self.jobs.aggregate(pipeline)}
