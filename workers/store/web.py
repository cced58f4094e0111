"""The `web` collection: what every dashboard process of one database must share.

One document, `csrf`: the key that signs CSRF tokens. It lives in the database
so that any number of web processes (and hosts) behind one dashboard accept each
other's tokens; whoever can read it can already change every job.
"""

from __future__ import annotations

import secrets

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from workers.errors import WorkersError
from workers.store.base import Connection, translated

_CSRF_KEY = "csrf"


class WebQueries(Connection):
    @translated
    def csrf_key(self) -> bytes:
        """The signing key, made by the first process to ask: an upsert with $setOnInsert,
        so two processes asking at once agree on one key (the loser of the insert race
        gets a duplicate key error and reads the winner's)."""
        fresh = {"$setOnInsert": {"key": secrets.token_bytes(32)}}
        try:
            doc = self.web.find_one_and_update(
                {"_id": _CSRF_KEY}, fresh, upsert=True, return_document=ReturnDocument.AFTER
            )
        except DuplicateKeyError:
            doc = self.web.find_one({"_id": _CSRF_KEY})
        if doc is None:  # written by the upsert above, or by the process that won its race
            raise WorkersError("the dashboard's CSRF key could not be read back")
        return bytes(doc["key"])
