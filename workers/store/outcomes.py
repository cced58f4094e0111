"""What waiting and listening read: the jobs of a set of ids, a change stream of the jobs
that finished (or were removed) for `workers.wait`, and one of every job's state for
`workers.on` and `workers.events`.

One stream and one query per wake serve every waiter of a process (waiting.py); the read
is by `_id`, so it costs one index lookup per id whatever the collection holds.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from workers.record import FINISHED
from workers.store.base import Connection, Document, translated
from workers.store.indexes import IndexSpec
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


FINISHED_AT_INDEX = "finished_at"
# the finished jobs by when they finished: a `finished` date is set by the finishing write
# and unset by a restart, so the partial index holds the finished jobs only (the catch-up)
INDEXES = (
    IndexSpec(
        "jobs",
        FINISHED_AT_INDEX,
        (("finished", 1), ("_id", 1)),
        partial={"finished": {"$type": "date"}},
    ),
)
# what an event needs of a job; the document comes whole with an insert or a replace, and
# by lookup with an update (read when the event is sent: perhaps after later changes)
EVENT_FIELDS = ("type", "status", "attempts", "progress", "result", "error", "updated",
                "finished")  # fmt: skip
# the fields whose change can make an event: an update that changes none of them (a lease
# renewal, a log line) is left out on the server, lookup and all
_EVENTFUL = "^(status|attempts|progress|result|error|finished)([.]|$)"
_CHANGED_PATHS = {"$objectToArray": {"$ifNull": ["$updateDescription.updatedFields", {}]}}
STATE_PIPELINE: list[Document] = [
    {
        "$match": {
            "$or": [
                {"operationType": {"$in": ["insert", "replace"]}},
                {
                    "operationType": "update",
                    "$expr": {
                        "$gt": [
                            {"$size": {"$filter": {
                                "input": _CHANGED_PATHS,
                                "cond": {"$regexMatch": {"input": "$$this.k", "regex": _EVENTFUL}},
                            }}},
                            0,
                        ]
                    },
                },
            ]
        }
    },
    {
        "$project": {
            "documentKey": 1,
            "updateDescription.updatedFields": 1,
            "updateDescription.removedFields": 1,
            **{f"fullDocument.{name}": 1 for name in EVENT_FIELDS},
        }
    },
]  # fmt: skip


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
        the job was gone by the lookup. An update's own fields are laid over the document
        looked up, so the state is the change's: a job failed and at once restarted is
        `failed` in its event, though the lookup read it ready again."""
        event = self._next_event()
        if event is None or not isinstance(event.get("fullDocument"), dict):
            return None
        return JobState(_job_id(event), as_changed(event["fullDocument"], event))


def as_changed(document: Document, event: Document) -> Document:
    """`document` (read at or after the change) with the change's own updated and removed
    fields (dotted paths into subdocuments; array elements, as in the log, are left)."""
    described = event.get("updateDescription")
    if not isinstance(described, dict):
        return document
    state = copy.deepcopy(document)
    for path, value in (described.get("updatedFields") or {}).items():
        _set_path(state, str(path).split("."), value)
    for path in described.get("removedFields") or []:
        _set_path(state, str(path).split("."), None, remove=True)
    return state


def _set_path(doc: Document, parts: list[str], value: Any, *, remove: bool = False) -> None:
    head, rest = parts[0], parts[1:]
    if not rest:
        if remove:
            doc.pop(head, None)
        else:
            doc[head] = value
        return
    inner = doc.get(head)
    if isinstance(inner, dict):
        _set_path(inner, rest, value, remove=remove)
    elif not remove and inner is None:
        doc[head] = {}
        _set_path(doc[head], rest, value)


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
        stream could not resume, page by page however many finished meanwhile."""
        command = self._finished_since_command(since, after, limit)
        found = self.jobs.find(
            command["filter"],
            command["projection"],
            sort=list(command["sort"].items()),
            hint=self.scan_hint(FINISHED_AT_INDEX),
            limit=limit,
        )
        return list(found)

    def _finished_since_command(
        self, since: datetime, after: tuple[datetime, Any] | None, limit: int
    ) -> Document:
        """A range of `finished_at`, bounded by the page whatever number of finished jobs
        retention keeps; its filter repeats the index's partial filter."""
        query: Document = {"finished": {"$type": "date", "$gte": since}}
        if after is not None:
            moment, last = after
            later = [{"finished": {"$gt": moment}}, {"finished": moment, "_id": {"$gt": last}}]
            query = {"$and": [query, {"$or": later}]}
        return {
            "filter": query,
            "projection": {name: 1 for name in EVENT_FIELDS},
            "sort": {"finished": 1, "_id": 1},
            "limit": limit,
        }

    def catch_up_queries(self) -> dict[str, tuple[Document, Document]]:
        """The catch-up read, as (find command, plan), a page after a page."""
        after = (self.now(), "explain-a")
        command = self._finished_since_command(self.now(), after, 1_000)
        find = {"find": self.jobs.name, **command, "hint": self.index(FINISHED_AT_INDEX)}
        return {"finished since": (find, self._explain(find))}
