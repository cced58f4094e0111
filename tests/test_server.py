"""What the queue asks of its server: reads at the primary whatever the URL says, and a server
new enough for its queries, refused at boot otherwise with one line naming both versions."""

from __future__ import annotations

from typing import Any

import pytest
from pymongo import ReadPreference

import workers
from workers.errors import ServerTooOld
from workers.store.base import MIN_SERVER, version_tuple


def test_the_queues_reads_go_to_the_primary_whatever_the_urls_read_preference(
    make_settings: Any, mongo_url: str
) -> None:
    """A claim read back from a lagging secondary would miss the jobs it took (they would
    wait for their lease to end); MongoDB reads at the URL's readPreference unless told
    otherwise, so the store says primary on every collection, the streams included."""
    url = mongo_url.replace("?", "?readPreference=secondaryPreferred&")
    app = workers.boot(settings=make_settings(mongo__url=url))
    try:
        store = app.store
        collections = [store.jobs, store.nodes, store.cron, store.metrics, store.web,
                       store.candidates]  # fmt: skip
        assert all(c.read_preference == ReadPreference.PRIMARY for c in collections)
        beat = store.for_heartbeat(lease=5)
        stream = store.ready_stream()
        try:
            assert beat.jobs.read_preference == ReadPreference.PRIMARY
            assert stream._collection.read_preference == ReadPreference.PRIMARY
        finally:
            beat.close()
            stream.close()
        # the app's own database keeps the URL's choice
        assert workers.database().read_preference == ReadPreference.SECONDARY_PREFERRED
    finally:
        workers.shutdown()


@pytest.mark.parametrize("version", ["4.2.24", "4.4.1", "3.6.0", ""])
def test_a_server_older_than_the_queries_need_is_refused_naming_both_versions(
    app: Any, version: str
) -> None:
    app.store._info = {"version": version}  # as buildInfo would answer

    with pytest.raises(ServerTooOld) as refused:
        app.store.check_version()

    message = str(refused.value)
    assert "\n" not in message and MIN_SERVER in message and (version or "no version") in message


@pytest.mark.parametrize("version", ["4.4.2", "6.0.19", "8.0.4", "8.2.11", "7.0.0-rc1"])
def test_a_server_new_enough_is_accepted(app: Any, version: str) -> None:
    app.store._info = {"version": version}

    assert app.store.check_version() == version


def test_versions_compare_by_number() -> None:
    assert version_tuple("4.10.0") > version_tuple("4.4.2") > version_tuple("4.4.1")
    assert version_tuple("7.0.0-rc1") == (7, 0, 0)
