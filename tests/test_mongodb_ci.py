"""The CI workflow for MongoDB (issue 23, item 19) cannot run here: no MongoDB binary and no
docker. What can be checked is that it runs what the docs say, against the versions it
says, each a single-node replica set."""

from __future__ import annotations

from tests.conftest import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "mongodb.yml"


def test_the_mongodb_workflow_runs_the_docs_command_against_6_7_and_8() -> None:
    text = WORKFLOW.read_text()
    assert 'mongodb: ["6.0", "7.0", "8.0"]' in text
    assert '"mongo:${{ matrix.mongodb }}"' in text and "--replSet rs0" in text
    assert 'rs.initiate({_id: "rs0"' in text
    assert 'make test TEST_MONGO_URL="mongodb://localhost:27017/?replicaSet=rs0"' in text
    readme = (ROOT / "docs" / "mongodb.md").read_text()
    assert "`make test TEST_MONGO_URL=mongodb://...`" in readme
    assert "MongoDB 6.0, 7.0 and\n8.0" in readme or "MongoDB 6.0, 7.0 and 8.0" in readme
