"""The `web` collection: what every dashboard process of one database must share.

One document, `csrf`: the key that signs CSRF tokens. It lives in the database
so that any number of web processes (and hosts) behind one dashboard accept each
other's tokens; whoever can read it can already change every job.

And the login sessions, `session:<SHA-256 of its id>`: the token they were opened with
(its SHA-256, as the settings keep it) and when they end. The browser holds the id alone,
never the token; a logout deletes the session, so every web process refuses it at once,
and the TTL index on `expires` removes the ones that ended.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from workers.errors import WorkersError
from workers.store.base import Connection, translated
from workers.store.indexes import IndexSpec

_CSRF_KEY = "csrf"
SESSION_INDEX = "session_expiry"
INDEXES = (IndexSpec("web", SESSION_INDEX, (("expires", 1),), ttl=0),)


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

    @translated
    def open_session(self, token_sha256: str, seconds: float) -> str:
        """A new session for the token of that digest, ending in `seconds` (the database's
        clock); returns its id, which only the browser keeps."""
        session = secrets.token_urlsafe(32)
        ends = self.now() + timedelta(seconds=seconds)
        self.web.insert_one({"_id": _session_key(session), "token": token_sha256, "expires": ends})
        return session

    @translated
    def session_token(self, session: str) -> str | None:
        """The digest of the token a live session was opened with; None if it ended, was
        closed, or never was. One read by `_id`."""
        doc = self.web.find_one({"_id": _session_key(session), "expires": {"$gt": self.now()}})
        token = doc.get("token") if doc else None
        return token if isinstance(token, str) else None

    @translated
    def close_session(self, session: str) -> None:
        self.web.delete_one({"_id": _session_key(session)})


def _session_key(session: str) -> str:
    return "session:" + hashlib.sha256(session.encode()).hexdigest()
