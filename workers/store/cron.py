"""The cron collection: the leader lease and the last tick handled per schedule.

The tick jobs themselves live in the jobs collection, where the unique index
on `unique_key` refuses a second job for one tick.
"""

from __future__ import annotations

from datetime import datetime

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from workers.store.base import Connection, Document, after_now, before_now, translated

LEADER = "leader"


class CronQueries(Connection):
    @translated
    def leader(self) -> Document | None:
        return self.cron.find_one({"_id": LEADER})

    @translated
    def leadership_free(self, owner: str) -> bool:
        """Cheap pre-check (this node's corrected clock): is there a lease worth trying for?"""
        doc = self.cron.find_one({"_id": LEADER}, {"owner": 1, "expires": 1})
        return doc is None or doc.get("owner") == owner or doc["expires"] <= self.now()

    @translated
    def take_leadership(self, owner: str, lease: float) -> bool:
        """Take the lease if it is free or expired, or renew it if it is ours.

        One find_one_and_update on `_id`, with the expiry judged by the server's
        clock; the upsert creates the document the first time, and a concurrent
        taker of a live lease gets a duplicate key error, which means "not you".
        """
        mine = {"$eq": ["$owner", owner]}
        try:
            doc = self.cron.find_one_and_update(
                {"_id": LEADER, "$or": [{"owner": owner}, {"$expr": before_now("$expires")}]},
                [{"$set": {"owner": owner, "expires": after_now(lease),
                           "since": {"$cond": [mine, "$since", "$$NOW"]}}}],
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )  # fmt: skip
        except DuplicateKeyError:
            return False
        return doc is not None and doc.get("owner") == owner

    @translated
    def resign(self, owner: str) -> None:
        self.cron.delete_one({"_id": LEADER, "owner": owner})

    @translated
    def schedule_states(self) -> dict[str, datetime]:
        """The last tick handled, per schedule id."""
        docs = self.cron.find({"_id": {"$ne": LEADER}}, {"last_tick": 1})
        return {doc["_id"]: doc["last_tick"] for doc in docs if "last_tick" in doc}

    @translated
    def mark_fired(self, schedule_id: str, tick: datetime) -> None:
        """$max: a slow former leader cannot move a schedule back in time."""
        self.cron.update_one({"_id": schedule_id}, {"$max": {"last_tick": tick}}, upsert=True)
