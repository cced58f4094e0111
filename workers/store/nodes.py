"""The `nodes` collection: one document per live worker process, written by its heartbeat."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from workers.store.base import Connection, Document, translated
from workers.store.indexes import IndexSpec
from workers.version import __version__

NODE_TTL = 24 * 3600  # a node that stopped beating disappears after a day
INDEXES = (IndexSpec("nodes", "node_ttl", (("last_beat", 1),), ttl=NODE_TTL),)


class NodeQueries(Connection):
    @translated
    def beat(self, node_id: str, info: dict[str, Any]) -> None:
        """Upsert this process's record; `last_beat` is the server's clock, `started` set once."""
        self.nodes.update_one(
            {"_id": node_id},
            [
                {
                    "$set": {
                        **{k: {"$literal": v} for k, v in info.items()},
                        "last_beat": "$$NOW",
                        "started": {"$ifNull": ["$started", "$$NOW"]},
                    }
                }
            ],
            upsert=True,
        )

    @translated
    def forget_node(self, node_id: str) -> None:
        self.nodes.delete_one({"_id": node_id})

    @translated
    def list_nodes(self) -> list[Document]:
        return list(self.nodes.find().sort("started", 1))

    @translated
    def nodes_on_host(self, host: str) -> list[Document]:
        """The worker processes a host runs (or ran: a crashed one's record stays a day)."""
        return list(self.nodes.find({"host": host}))

    @translated
    def other_versions_beating(self, seconds: float) -> set[str]:
        """The versions other than ours of the nodes that beat in the last `seconds`."""
        since = self.now() - timedelta(seconds=seconds)
        query = {"last_beat": {"$gte": since}, "version": {"$ne": __version__}}
        return {str(v) for v in self.nodes.distinct("version", query)}

    @translated
    def live_peers(self, lease: float) -> list[tuple[str, list[str]]]:
        """The worker processes that beat within `lease` seconds (the server's clock), each
        with the job types it runs: who shares a wake-up (peers.py). Few documents."""
        since = self.now() - timedelta(seconds=lease)
        found = self.nodes.find({"last_beat": {"$gte": since}}, {"types": 1})
        return [(str(doc["_id"]), _types_of(doc)) for doc in found]

    def live_types(self, lease: float) -> set[str]:
        """The job types some worker process runs that beat within `lease` seconds (the
        server's clock): a type outside it has no live node, and its jobs wait in silence.
        The nodes are few (one document per process): no index needed."""
        return {job_type for _, types in self.live_peers(lease) for job_type in types}


def _types_of(doc: Document) -> list[str]:
    types = doc.get("types")
    return [str(t) for t in types] if isinstance(types, list) else []
