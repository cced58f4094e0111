"""What waiting and listening read: the jobs of a set of ids, a change stream of the jobs
that finished (or were removed) for `workers.wait`, and one of every job's state for
`workers.on` and `workers.events`.

One stream and one query per wake serve every waiter of a process (waiting.py); the read
is by `_id`, so it costs one index lookup per id whatever the collection holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from workers.record import FINISHED
from workers.store.base import Connection, Document, translated
from workers.store.stream import ReadyStream, _job_id

# an update event (MongoDB), a replace event (SecantusDB's pipeline updates) or a delete
FINISHED_PIPELINE: list[Document] = [
    {
        "$match": {
            "$or": [
                {
                    "operationType": {"$in": ["insert", "replace"]},
                    "fullDocument.status": {"$in": list(FINISHED)},
                },
                {
                    "operationType": "update",
                    "updateDescription.updatedFields.status": {"$in": list(FINISHED)},
                },
                {"operationType": "delete"},
            ]
        }
    },
    {"$project": {"operationType": 1, "documentKey": 1}},
]


class FinishedStream(ReadyStream):
    """The jobs that finished or were removed (`next_change().job_id`), resumable by its
    token."""

    pipeline: ClassVar[list[Document]] = FINISHED_PIPELINE


# what an event needs of a job; the document comes whole with a replace (SecantusDB's
# pipeline updates) and by lookup with an update (MongoDB)
EVENT_FIELDS = ("type", "status", "attempts", "progress", "result", "error", "updated",
                "finished")  # fmt: skip
STATE_PIPELINE: list[Document] = [
    {"$match": {"operationType": {"$in": ["insert", "update", "replace"]}}},
    {"$project": {"documentKey": 1, **{f"fullDocument.{name}": 1 for name in EVENT_FIELDS}}},
]


@dataclass(frozen=True)
class JobState:
    """A job as one change left it (its document read at the change, or just after)."""

    job_id: Any
    document: Document


class StateStream(ReadyStream):
    """Every change to a job, with the job's state: what the events are made of."""

    pipeline: ClassVar[list[Document]] = STATE_PIPELINE
    full_document: ClassVar[str | None] = "updateLookup"

    @translated
    def next_state(self) -> JobState | None:
        """The next change (waiting at most the stream's wait); None if none came, or if
        the job was gone by the lookup."""
        event = self._next_event()
        if event is None or not isinstance(event.get("fullDocument"), dict):
            return None
        return JobState(_job_id(event), event["fullDocument"])


class OutcomeQueries(Connection):
    @translated
    def jobs_by_ids(self, ids: Sequence[str]) -> list[Document]:
        """The jobs of `ids` that exist, whole (by `_id`: one index lookup each)."""
        return list(self.jobs.find({"_id": {"$in": list(ids)}})) if ids else []

    def finished_changes(self) -> FinishedStream:
        """A change stream of the jobs that finish, on its own connection."""
        return FinishedStream(self.url, self.db.name, self.jobs.name, self.timeout)

    def state_changes(self) -> StateStream:
        """A change stream of every job's state, on its own connection (the events)."""
        return StateStream(self.url, self.db.name, self.jobs.name, self.timeout)

    @translated
    def finished_since(
        self, since: datetime, after: tuple[datetime, Any] | None = None, limit: int = 1_000
    ) -> list[Document]:
        """A page of the jobs that finished at `since` or later, in (`finished`, `_id`)
        order, after `after` (the last page's last): what a listener catches up on when its
        stream could not resume, page by page however many finished meanwhile. Rare, so
        it reads through the `listing` index's statuses and checks `finished` by document."""
        query: Document = {"status": {"$in": list(FINISHED)}, "finished": {"$gte": since}}
        if after is not None:
            moment, last = after
            later = [{"finished": {"$gt": moment}}, {"finished": moment, "_id": {"$gt": last}}]
            query = {"$and": [query, {"$or": later}]}
        fields = {name: 1 for name in EVENT_FIELDS}
        found = self.jobs.find(query, fields).sort([("finished", 1), ("_id", 1)]).limit(limit)
        return list(found)
