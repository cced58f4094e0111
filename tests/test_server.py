"""What the queue asks of its server: reads at the primary whatever the URL says, and a server
new enough for its queries, refused at boot otherwise with one line naming both versions."""

from __future__ import annotations

from typing import Any

import pytest
from pymongo import ReadPreference

import workers
from workers.errors import ServerTooOld, ServerUnsupported
from workers.store.base import MIN_SERVER, arbiter_warning, emulated_by, version_tuple


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


@pytest.mark.parametrize("version", ["4.4.29", "4.2.24", "4.4.1", "3.6.0", ""])
def test_a_server_older_than_the_queries_need_is_refused_naming_both_versions(
    app: Any, version: str
) -> None:
    app.store._info = {"version": version}  # as buildInfo would answer

    with pytest.raises(ServerTooOld) as refused:
        app.store.check_version()

    message = str(refused.value)
    assert "\n" not in message and MIN_SERVER in message and (version or "no version") in message


@pytest.mark.parametrize("version", ["5.0.0", "6.0.19", "8.0.4", "8.2.11", "7.0.0-rc1"])
def test_a_server_new_enough_is_accepted(app: Any, version: str) -> None:
    app.store._info = {"version": version}

    assert app.store.check_version() == version


def test_versions_compare_by_number() -> None:
    assert version_tuple("4.10.0") > version_tuple("4.4.2") > version_tuple("4.4.1")
    assert version_tuple("7.0.0-rc1") == (7, 0, 0)


@pytest.mark.parametrize(
    ("url", "product"),
    [
        ("mongodb://u:p@app.cluster-x.eu-west-1.docdb.amazonaws.com:27017/?tls=true",
         "Amazon DocumentDB"),
        ("mongodb+srv://app.mongo.cosmos.azure.com/", "Azure Cosmos DB"),
        ("mongodb://db-0:27017,acct.mongocluster.cosmos.azure.com:10255", "Azure Cosmos DB"),
    ],
)  # fmt: skip
def test_an_emulation_of_mongodb_is_refused_at_boot_naming_it(
    app: Any, url: str, product: str
) -> None:
    app.store.url = url  # as the settings would name it

    with pytest.raises(ServerUnsupported) as refused:
        app.store.check_version()

    message = str(refused.value)
    assert product in message and "not MongoDB" in message and "u:p" not in message
    assert emulated_by("mongodb://db.example.com:27017,docdb.example.org") is None


def test_majority_writes_wait_a_bounded_time_and_an_arbiter_is_named(
    make_settings: Any,
) -> None:
    """A primary-secondary-arbiter set with its secondary down cannot acknowledge a
    majority write: it fails after mongo.timeout instead of holding every write."""
    app = workers.boot(settings=make_settings(mongo__write_concern="majority", mongo__timeout=4))
    try:
        concerns = [app.store.jobs.write_concern.document, app.store.limits.write_concern.document]
    finally:
        workers.shutdown()
    assert concerns[0] == {"w": "majority", "j": True, "wtimeout": 4000}
    assert concerns[1]["wtimeout"] == 4000
    psa = {"setName": "rs0", "hosts": ["a:1", "b:1"], "arbiters": ["c:1"]}
    warning = arbiter_warning(psa, "majority")
    assert warning and "c:1" in warning and "mongo.timeout" in warning
    assert arbiter_warning(psa, "journaled") is None
    assert arbiter_warning({"setName": "rs0", "hosts": ["a:1", "b:1", "c:1"]}, "majority") is None


def test_the_apps_own_client_keeps_the_write_concern_its_url_names(
    make_settings: Any, mongo_url: str
) -> None:
    url = mongo_url.replace("?", "?w=1&")
    workers.boot(settings=make_settings(mongo__url=url, mongo__write_concern="majority"))
    try:
        named = workers.database().write_concern.document
    finally:
        workers.shutdown()
    workers.boot(settings=make_settings(mongo__write_concern="majority"))
    try:
        unnamed = workers.database().write_concern.document
    finally:
        workers.shutdown()
    assert named == {"w": 1}
    assert unnamed["w"] == "majority"
