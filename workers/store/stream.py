"""The wake-up stream: a change stream on the jobs collection reporting jobs that became ready.

It runs on a client of its own with one connection, so the getMore that waits
for events never takes a connection from the job threads. The match accepts
both shapes a status change can take: an `update` event with
`updatedFields.status` (MongoDB) and a `replace` event with the full document
(SecantusDB reports pipeline updates that way); both are correct on MongoDB.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

import pymongo
from pymongo import ReadPreference
from pymongo.errors import OperationFailure, PyMongoError

from workers.errors import StreamEnded, StreamUnavailable
from workers.record import READY, SCHEDULED
from workers.store.base import Document, translated

# $changeStream on a standalone server, or a server that has none at all
_NO_CHANGE_STREAMS = frozenset({40573, 40324, 115})
# the resume token is older than the oplog, or not one this server knows
_TOKEN_LOST = frozenset({260, 280, 286})

PIPELINE: list[Document] = [
    {
        "$match": {
            "$or": [
                {
                    "operationType": {"$in": ["insert", "replace"]},
                    "fullDocument.status": {"$in": [READY, SCHEDULED]},
                },
                {
                    "operationType": "update",
                    "updateDescription.updatedFields.status": {"$in": [READY, SCHEDULED]},
                },
            ]
        }
    },
    {
        "$project": {
            "operationType": 1,
            "documentKey": 1,
            "fullDocument.run_at": 1,
            "fullDocument.priority": 1,
            "fullDocument.status": 1,
            "fullDocument.type": 1,
            "updateDescription.updatedFields.run_at": 1,
            "updateDescription.updatedFields.status": 1,
        }
    },
]


@dataclass(frozen=True)
class ReadyChange:
    """A job became ready, or `scheduled` (ready when its `run_at` comes, then staged);
    `run_at` when the event carried it (None: assume due now), its id, and its priority
    and type when the event carried them (an insert does; an update may not)."""

    run_at: datetime | None
    job_id: Any = None
    priority: int | None = None
    scheduled: bool = False
    job_type: str | None = None  # an insert's (an update does not carry it)


class ReadyStream:
    """One change stream, resumable by its token after errors and server restarts."""

    pipeline: ClassVar[list[Document]] = PIPELINE
    full_document: ClassVar[str | None] = None  # "updateLookup": updates carry the document

    def __init__(self, url: str, database: str, collection: str, timeout: float) -> None:
        ms = int(timeout * 1000)
        self._client: pymongo.MongoClient[Document] = pymongo.MongoClient(
            url,
            tz_aware=True,
            appname="workers-wakeup",
            maxPoolSize=1,
            serverSelectionTimeoutMS=ms,
            connectTimeoutMS=ms,
            socketTimeoutMS=ms * 3,
        )
        self._collection = self._client.get_database(
            database, read_preference=ReadPreference.PRIMARY
        )[collection]
        self._stream: Any = None
        self.resume_token: Document | None = None

    @translated
    def open(self, max_wait: float) -> bool:
        """Open (or resume) the stream; False if the old resume token was no longer valid
        and the stream started afresh."""
        self.close_stream()
        wait_ms = max(1, int(max_wait * 1000))
        try:
            self._stream = self._collection.watch(
                self.pipeline,
                resume_after=self.resume_token,
                max_await_time_ms=wait_ms,
                full_document=self.full_document,
            )
            return True
        except OperationFailure as exc:
            if exc.code in _NO_CHANGE_STREAMS:
                raise StreamUnavailable(f"the server has no change streams: {exc}") from exc
            if self.resume_token is None or exc.code not in _TOKEN_LOST:
                raise
        self.resume_token = None
        self._stream = self._collection.watch(
            self.pipeline, max_await_time_ms=wait_ms, full_document=self.full_document
        )
        return False

    @translated
    def next_change(self) -> ReadyChange | None:
        """The next job that became ready, waiting at most `max_wait`; None if none came."""
        event = self._next_event()
        if event is None:
            return None
        fields = _fields(event)
        job_type = (event.get("fullDocument") or {}).get("type")
        return ReadyChange(
            _run_at(event),
            _job_id(event),
            _priority(event),
            fields.get("status") == SCHEDULED,
            job_type if isinstance(job_type, str) else None,
        )

    def _next_event(self) -> Document | None:
        """The next raw event, waiting at most `max_wait`, its token kept for a resume."""
        cursor = self._stream  # another thread may close the stream meanwhile
        if cursor is None:
            raise StreamUnavailable("the stream is not open")
        try:
            event = cursor.try_next()
        except PyMongoError:
            self.close_stream()
            raise
        if event is None and not cursor.alive:
            # invalidated (its collection dropped or renamed): try_next() would answer None
            # at once, forever, and the thread spin while the stream looked healthy. Start
            # afresh: a resume after an invalidate is refused
            self.close_stream()
            self.resume_token = None
            raise StreamEnded("the change stream ended (its collection was dropped or renamed)")
        self.resume_token = cursor.resume_token
        return event if isinstance(event, dict) else None

    def close_stream(self) -> None:
        if self._stream is not None:
            # the connection may be gone already; a new stream is opened on the next try
            with contextlib.suppress(PyMongoError):
                self._stream.close()
            self._stream = None

    def close(self) -> None:
        self.close_stream()
        self._client.close()


class AnyChange(ReadyStream):
    """Every change to a job (the dashboard's live updates): only its id is sent."""

    pipeline: ClassVar[list[Document]] = [{"$project": {"operationType": 1, "documentKey": 1}}]


def _fields(event: Document) -> Document:
    fields = event.get("fullDocument") or event.get("updateDescription", {}).get(
        "updatedFields", {}
    )
    return fields if isinstance(fields, dict) else {}


def _run_at(event: Document) -> datetime | None:
    run_at = _fields(event).get("run_at")
    return run_at if isinstance(run_at, datetime) else None


def _job_id(event: Document) -> Any:
    key = event.get("documentKey")
    return key.get("_id") if isinstance(key, dict) else None


def _priority(event: Document) -> int | None:
    full = event.get("fullDocument")
    priority = full.get("priority") if isinstance(full, dict) else None
    return priority if isinstance(priority, int) and not isinstance(priority, bool) else None
