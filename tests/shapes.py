"""What the servers write differently, read one way: the oplog's update entries.

MongoDB 5.0+ logs an update as a `$v: 2` diff (`diff.u` updated, `diff.i` inserted,
`diff.d` deleted, `diff.s<field>` a sub-document's own diff); SecantusDB logs
`diff.updatedFields`; MongoDB before 5.0 logged `$set`. Change streams report
`updateDescription.updatedFields` on both (a pipeline update may come as a `replace`
with the whole document on SecantusDB: workers/store/stream.py reads both)."""

from __future__ import annotations

from typing import Any


def oplog_updated_fields(entry: dict[str, Any]) -> dict[str, Any]:
    """The top-level fields an oplog update entry set, whatever the server's format."""
    change = entry.get("o") or {}
    diff = change.get("diff")
    if isinstance(diff, dict):
        if "updatedFields" in diff:  # SecantusDB
            return dict(diff["updatedFields"])
        fields = {**(diff.get("u") or {}), **(diff.get("i") or {})}  # MongoDB $v: 2
        fields.update({key[1:]: value for key, value in diff.items() if key.startswith("s")})
        return fields
    return dict(change.get("$set") or {})  # MongoDB $v: 1
