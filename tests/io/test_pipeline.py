"""Source → destination accounting: the pure comparison on hand-made data (one case per
anomaly and the valid case), and a real sync between two fake connector processes."""

from __future__ import annotations

import pytest

from harness.io import acceptance as acc
from harness.io import pipeline
from harness.io.runner import ConnectorError

EMITTED = {"s": {(1,): {"id": 1, "v": "a"}, (2,): {"id": 2, "v": "b"}}}


def test_account_valid():
    verdict = pipeline.account(EMITTED, {"s": dict(EMITTED["s"])})
    assert verdict.valid and verdict.figures["s"]["written_keys"] == 2


@pytest.mark.parametrize(("written", "kind", "key"), [
    ({(1,): {"id": 1, "v": "a"}}, "lost", (2,)),
    ({**EMITTED["s"], (3,): {"id": 3}}, "unexpected", (3,)),
    ({(1,): {"id": 1, "v": "a"}, (2,): {"id": 2, "v": "old"}}, "stale", (2,)),
])
def test_account_anomalies(written, kind, key):
    verdict = pipeline.account(EMITTED, {"s": written})
    assert not verdict.valid
    assert getattr(verdict, kind)["s"] == [key]
    assert f"{kind}: 1 e.g. [{key}]" in verdict.explain()


def test_records_by_key_keeps_the_last_value_and_needs_a_key():
    configured = {"streams": [{"stream": {"name": "s", "source_defined_primary_key": [["id"]]},
                               "sync_mode": "full_refresh", "destination_sync_mode": "append"}]}
    recs = [{"stream": "s", "data": {"id": 1, "v": n}} for n in range(3)]
    assert pipeline.records_by_key(recs, configured) == {"s": {(1,): {"id": 1, "v": 2}}}
    with pytest.raises(KeyError, match="no primary-key field 'id'"):
        pipeline.records_by_key([{"stream": "s", "data": {"v": 1}}], configured)
    configured["streams"][0]["stream"]["source_defined_primary_key"] = []
    with pytest.raises(ValueError, match="has no primary key to account by"):
        pipeline.primary_keys(configured)


def test_sync_between_fake_processes_counts_states(fake):
    source, destination = fake("good"), fake("good")
    configured = acc.configure_catalog(source.discover({"count": 1}), "incremental")
    result = pipeline.sync(source, {"count": 12}, destination, {"count": 1}, configured)
    assert result.emitted["items"] == 12 and len(result.emitted_by_key["items"]) == 12
    assert result.states_emitted == result.states_echoed == 3
    assert result.last_state_echoed == result.last_state_emitted


def test_sync_reports_the_source_failure_not_the_destinations(fake):
    source, destination = fake("crash"), fake("good")
    configured = acc.configure_catalog(source.discover({"count": 1}), "full_refresh")
    with pytest.raises(ConnectorError) as err:
        pipeline.sync(source, {"count": 12}, destination, {"count": 1}, configured)
    assert err.value.connector == "fake-crash" and err.value.exit_code == 3
