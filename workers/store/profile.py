"""What one server's engine makes pay, measured, behind a profile: the main path stays the
one that is right on MongoDB, and a workaround applies only where its server is seen.

SecantusDB (the embedded default) answers a hinted find by reading every entry of the
hinted index, and its own plan by filtering a collection scan: with 1,000 ready jobs
among 51,000, the claim's candidate scan took 980 ms hinted and 45 ms unhinted, and the
same 45 ms with 1,000 ready jobs alone (2026-12-05, /tmp probes noted in
docs/performance.md). On MongoDB the hint pins the plan the explain tests check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Candidates a claim reads beyond its limit where it scans for itself: those another
# claimer took between the scan and the write are made up from the next ones.
SCAN_SLACK = 8


@dataclass(frozen=True)
class ServerProfile:
    name: str = "mongodb"
    hint_scans: bool = True  # hint the scans of the claim path with their index
    # Candidates one claim scan reads, where scans are shared: SecantusDB reads every
    # ready job whatever the limit (a scan of 20,000 took 1 s), so each scan there brings
    # back 1,024 for the claimers that follow. None: the claim's own limit plus
    # SCAN_SLACK, since on MongoDB a scan costs the keys it reads and nothing is shared
    # (a claim of 10 read 256 documents, of which it took 10).
    scan_candidates: int | None = None
    # Share each scan's candidates between the claimers of a set of types (claims.Spare and
    # the `candidates` list): on SecantusDB a scan costs as much as the ready jobs it reads,
    # so one scan serves many claims. On MongoDB a scan is an index range of a few ms, and
    # the shared list would be one document every claimer writes, a claimer could wait up
    # to TURN_MAX behind a scanner that died, and a better job up to SPARE_SECONDS behind
    # a spare: each claim scans for itself there.
    shared_scans: bool = False

    def hint(self, index: str) -> str | None:
        return index if self.hint_scans else None

    def scan_size(self, wanted: int, held: int = 0) -> int:
        """How many candidates a claim of `wanted` jobs reads: `held` more where live
        spares of other claimers hold some of the first ones."""
        if self.scan_candidates is None:
            return wanted + SCAN_SLACK
        return self.scan_candidates + min(held, self.scan_candidates)


MONGODB = ServerProfile()
SECANTUS = ServerProfile(
    name="secantusdb", hint_scans=False, scan_candidates=1024, shared_scans=True
)


def profile_of(build_info: dict[str, Any]) -> ServerProfile:
    return SECANTUS if "secantusVersion" in build_info else MONGODB
