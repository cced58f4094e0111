"""What waiting for jobs reads: the jobs of a set of ids, and a change stream of the jobs
that finished (or were removed), for `workers.wait` and `Pushed.wait`.

One stream and one query per wake serve every waiter of a process (waiting.py); the read
is by `_id`, so it costs one index lookup per id whatever the collection holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from workers.record import FINISHED
from workers.store.base import Connection, Document, translated
from workers.store.stream import ReadyStream

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


class OutcomeQueries(Connection):
    @translated
    def jobs_by_ids(self, ids: Sequence[str]) -> list[Document]:
        """The jobs of `ids` that exist, whole (by `_id`: one index lookup each)."""
        return list(self.jobs.find({"_id": {"$in": list(ids)}})) if ids else []

    def finished_changes(self) -> FinishedStream:
        """A change stream of the jobs that finish, on its own connection."""
        return FinishedStream(self.url, self.db.name, self.jobs.name, self.timeout)
