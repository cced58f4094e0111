"""Shared scans, for a server whose scan costs as much as the ready jobs it reads (the
embedded one; `ServerProfile.shared_scans`): one scan serves many claims.

A claimer that scans keeps a share of the candidates it did not take (its spare) and
publishes the rest in `<prefix>.candidates` (one document per set of types, by `_id`); a
claimer whose spare ran dry takes its next share from that list in one atomic write (the
share leaves the list), so no two claimers hold the same candidates and their picks do not
collide. The list also records the ids it handed out (`out`, the scanner's own share
included): the claimer that scans when the list is used up leaves those out while their
spares live, since they are still ready and head the queue, and picking them would only
collide with their holders. The list is only a hint (every take is still conditional on
`status: ready`), so scans cost the cluster about one per `SPARE_SECONDS` (or per
`scan_candidates` jobs, or per `SCANS_APART` scan durations where scans are slow) however
many processes claim, not one per process.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pymongo import ReturnDocument
from pymongo.errors import PyMongoError

from workers.store.base import Connection, Document, hashable

# A scan reads the server profile's `scan_candidates` (SecantusDB, the profile that shares
# scans: a scan costs the same whatever its limit, since it reads every ready job). No list
# holds more than this:
_LIST_CAP = 1 << 16
# Candidates a claimer takes from the shared list at a time, at least one claim's worth.
SHARE = 32
# How long the rest of a scan may be claimed from without scanning again: SPARE_SECONDS,
# or SCANS_APART times the scan's own duration where scans are slow (this server at a
# large backlog), so that scanning takes at most about a twentieth of the time. A job
# pushed meanwhile with a better priority waits at most this long behind the older
# candidates: 1 s on MongoDB, whose scans take milliseconds; on the embedded server 5 s
# at a backlog of 5,000 and 20 s at 20,000 (5 x apart, 2 x 4 at backlog 5,000 drained
# 161 jobs/s, 20 x apart with 1,024 candidates 218/s; 2026-12-05).
SPARE_SECONDS = 1.0
SCANS_APART = 20
_SPARE_MISSES = 2  # picks in a row that found every job taken: the spare is stale
# A scanning turn lasts twice the last scan, within these bounds (seconds): a claimer that
# found the list used up waits for the holder's list at most that long, then scans itself.
# The floor is long on purpose: the last scan may have read an empty queue in a
# millisecond while this one reads a backlog that came due at once (0.2-0.4 s here at
# 5,000, 1.0-1.2 s at 20,000), and a turn that runs out mid-scan has the waiters scan
# beside the holder, each scan slowing the other and their picks colliding. A waiter stops
# waiting as soon as the holder publishes, so a long turn costs only when the holder died
# mid-scan. With a floor of 1 s, a drain of 20,000 due at once began with three scans
# (1.0, 1.2 and 0.9 s: the other process scanned beside the holder, and its list made the
# holder's stale) and ran at 105 jobs/s; with 5 s, with one, at 181 (2026-12-05, probe
# of the py-spy-less kind: each scan's duration logged by the worker processes).
TURN_MIN, TURN_MAX = 5.0, 10.0
_LOOK_MIN = 0.05  # seconds between a waiter's looks for the holder's list
_APART_MS = SCANS_APART * 1000


@dataclass
class Spare:
    """The candidates a claimer holds and did not try yet: its next claims try them first,
    by `_id`, and so pay for one scan per several batches, not one per batch (on a server
    whose scan reads every ready job, the scan is most of a claim's cost). What a spare
    holds no other claimer holds: each share leaves the shared list as it is taken."""

    ids: list[Any] = field(default_factory=list)
    until: float = 0.0
    misses: int = 0
    # how the claimer waits for another's scan: its own stop-aware wait (True: stop), so a
    # claimer told to stop does not sleep in the store
    pause: Callable[[float], Any] = time.sleep

    def take(self, count: int) -> list[Any]:
        """The next `count`, in queue order."""
        if time.monotonic() > self.until or self.misses >= _SPARE_MISSES:
            self.ids = []
        taken = self.ids[:count]
        del self.ids[:count]
        return taken

    def taken(self, got: int) -> None:
        """How a pick went: one that found every job taken counts toward a stale spare."""
        self.misses = 0 if got else self.misses + 1

    def keep(self, ids: list[Any], age: float = 0.0, scan_seconds: float = 0.0) -> None:
        """Hold `ids` for the life of the scan that found them (`age` ago, in `scan_seconds`)."""
        self.ids, self.misses = ids, 0
        self.until = time.monotonic() + _lifetime(scan_seconds) - age


class SharedScanQueries(Connection):
    def _share(self, types: list[str], spare: Spare, now: datetime, count: int) -> list[Any]:
        """Move the next `count` candidates of the shared list into `spare`, if the list is
        fresh; if it is used up, take the turn to scan, or, when another claimer holds it,
        wait for its list (looking again every third of a scan, at most `TURN_MAX` s in
        all) rather than scan beside it. Claimers woken together by the clock so scan once,
        not once each. All by `_id` (IDHACK); on any error, scan (the list is a hint).

        Returns, with the turn, the ids the used-up list handed out that live spares still
        hold: they are still ready, so they head the next scan, and picking them would
        only collide with their holders."""
        deadline = time.monotonic() + TURN_MAX
        me = secrets.token_hex(8)  # whose verdict the list records
        try:
            while True:
                doc = self._take_share(types, now, count, me)
                ids, turn = _granted(doc, me)
                if ids and doc is not None:
                    spare.keep(ids, _age(doc, now), _scan_seconds(doc))
                    return []
                if turn:
                    return _held_out(doc, now)
                wait = min(_turn_left(doc, now), deadline - time.monotonic(), _look_every(doc))
                if wait <= 0 or spare.pause(wait):
                    return []  # the holder is late, or the claimer stops: scan beside it
                now = self.now()
        except PyMongoError:
            return []

    def _take_share(self, types: list[str], now: datetime, count: int, me: str) -> Document | None:
        """The shared list after one atomic write that gave this claimer (`me`) its verdict
        in `grant`: the list's first `count` ids if it is fresh (they leave the list, so a
        share goes to one claimer only, and join `out`, the ids live spares hold), or else,
        when it had no ids left and no turn was held, the turn to scan (twice the last scan,
        within `TURN_MIN`..`TURN_MAX`).

        The verdict is read from the document as this write left it: SecantusDB may hand
        a findAndModify the document as it was before an earlier concurrent write, which
        told two claimers woken together that each held the turn, and both scanned."""
        at = _millis(now)
        life_ms = {"$max": [SPARE_SECONDS * 1000, {"$multiply": ["$scan_seconds", _APART_MS]}]}
        fresh_until = {"$add": [{"$toLong": "$scanned"}, life_ms]}
        fresh = {"$and": [{"$isArray": "$ids"}, {"$gt": [fresh_until, at]}]}
        ids = {"$cond": [{"$isArray": "$ids"}, "$ids", []]}
        has_ids = {"$and": [fresh, {"$gt": [{"$size": ids}, 0]}]}
        free = {"$lte": [{"$toLong": "$scanning_until"}, at]}  # a missing turn is null: free
        turn = {"$and": [{"$not": [has_ids]}, free]}
        scan_ms = {"$multiply": [{"$ifNull": ["$scan_seconds", 0]}, 2000]}
        turn_ms = {"$min": [TURN_MAX * 1000, {"$max": [TURN_MIN * 1000, scan_ms]}]}
        until = {"$toDate": {"$add": [at, {"$toLong": turn_ms}]}}
        share = {"$cond": [has_ids, {"$slice": [ids, count]}, []]}
        share_set = {
            "ids": {"$cond": [fresh, {"$slice": ["$ids", count, _LIST_CAP]}, "$ids"]},
            "out": {
                "$cond": [has_ids, {"$concatArrays": [{"$ifNull": ["$out", []]}, share]}, "$out"]
            },
            "scanning_until": {"$cond": [turn, until, "$scanning_until"]},
            "grant": {"by": {"$literal": me}, "ids": share, "turn": turn},
        }
        return self.candidates.find_one_and_update(
            {"_id": list_key(types)},
            [{"$set": share_set}],
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )

    def _publish(self, types: list[str], ids: list[Any], took: float, out: list[Any]) -> None:
        """Offer the rest of a scan to the claimers of these types (best effort), and end
        this claimer's turn. `out`: what this claimer took of the scan (its claim and spare)."""
        fields: Document = {"ids": ids, "scan_seconds": took, "out": out}
        stamped = {"$currentDate": {"scanned": True}}
        update = {"$set": fields, "$unset": {"scanning_until": ""}, **stamped}
        with contextlib.suppress(PyMongoError):  # the others scan for themselves
            self.candidates.update_one({"_id": list_key(types)}, update, upsert=True)


def list_key(types: list[str]) -> str:
    """One shared candidate list per set of types: claimers of other sets cannot use it."""
    digest = hashlib.sha256("\0".join(sorted(types)).encode()).hexdigest()[:24]
    return f"types:{digest}"


def _millis(moment: datetime) -> int:
    """Milliseconds since the epoch: BSON dates are compared as these (`$toLong`)."""
    return int(moment.timestamp() * 1000)


def _lifetime(scan_seconds: float) -> float:
    """Seconds a scan's candidates may be claimed from (see SPARE_SECONDS)."""
    return max(SPARE_SECONDS, SCANS_APART * scan_seconds)


def _scan_seconds(doc: Document) -> float:
    last = doc.get("scan_seconds")
    return float(last) if isinstance(last, int | float) and not isinstance(last, bool) else 0.0


def _granted(doc: Document | None, me: str) -> tuple[list[Any], bool]:
    """What `_take_share` gave `me`, as the write recorded it: (a share's ids, the turn)."""
    grant = doc.get("grant") if doc else None
    if not isinstance(grant, dict) or grant.get("by") != me:
        return [], False
    ids = grant.get("ids")
    return (ids if isinstance(ids, list) else []), grant.get("turn") is True


def _age(doc: Document, now: datetime) -> float:
    """Seconds since the list's scan."""
    scanned = doc.get("scanned")
    return max(0.0, (now - scanned).total_seconds()) if isinstance(scanned, datetime) else 0.0


def _turn_left(doc: Document | None, now: datetime) -> float:
    """Seconds until the turn another claimer holds runs out."""
    scanning = doc.get("scanning_until") if doc else None
    return (_millis(scanning) - _millis(now)) / 1000 if isinstance(scanning, datetime) else 0.0


def _look_every(doc: Document | None) -> float:
    """While another claimer scans, look for its list every third of its last scan, but not
    more often than every `_LOOK_MIN` (the last scan may have read an empty queue)."""
    last = doc.get("scan_seconds") if doc else None
    return max(_LOOK_MIN, last / 3) if isinstance(last, float) else _LOOK_MIN


def _held_out(doc: Document | None, now: datetime) -> list[Any]:
    """The ids the list had handed out, while their spares live (as long as the list); a
    write that gave the turn left `out`, `scanned` and `scan_seconds` as they were."""
    out = doc.get("out") if doc else None
    return out if doc is not None and isinstance(out, list) and _fresh(doc, now) else []


def unheld(candidates: list[Document], held: list[Any], fill: int) -> list[Document]:
    """The candidates no live spare holds (an `_id` that is a document is kept: it only costs a
    collision, which the claim write settles); then, up to `fill`, the held ones after all.
    A held id may be back to ready already (claimed from the spare, then retried at once or
    handed back) and no event will name it again: left out of every scan for the list's
    life, it would wait for a poll. Picking it costs at most a collision."""
    if not held:
        return candidates
    out = {job_id for job_id in held if hashable(job_id)}
    free = [doc for doc in candidates if not hashable(doc["_id"]) or doc["_id"] not in out]
    if len(free) < fill:
        free += [doc for doc in candidates if hashable(doc["_id"]) and doc["_id"] in out][
            : fill - len(free)
        ]
    return free


def _fresh(doc: Document, now: datetime) -> bool:
    """The freshness test of `_take_share`, on the list's scan: the same verdict."""
    scanned = doc.get("scanned")
    if not isinstance(scanned, datetime):
        return False
    life_ms = max(SPARE_SECONDS * 1000, _scan_seconds(doc) * _APART_MS)  # as the server does
    return _millis(scanned) + life_ms > _millis(now)


def split(candidates: list[Document], count: int) -> tuple[list[Any], list[Any], list[Any]]:
    """A scan's ids as (this claim's, this claimer's spare, the shared list's), split before
    the claim so that the shared list is published at once: claimers waiting for this
    scan take their shares while this one claims. The spare fills the claim when some of
    its first picks were taken meanwhile."""
    mine = candidates[:count]
    rest = _same_priority(candidates[count:], mine)
    kept = max(SHARE, count)
    return [doc["_id"] for doc in mine], rest[:kept], rest[kept:]


def _same_priority(candidates: list[Document], claimed: list[Document]) -> list[Any]:
    """The candidates a spare may keep: those of the priority of the last one claimed. Picking among
    equals bends only the run_at order; a worse priority never jumps the queue by a spare
    (a better one pushed after the scan waits at most a scan's lifetime, see SPARE_SECONDS)."""
    if not claimed:
        return []
    priority = claimed[-1].get("priority")
    return [doc["_id"] for doc in candidates if doc.get("priority") == priority]
