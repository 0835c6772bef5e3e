"""The conformance catalogue: stable check ids, the protocol section each comes from, and
what it asserts. Ids become rows of the HTML report; a suite marks a test with
`@pytest.mark.conformance("api.append.record-ids")` and the plugin rejects unknown ids, so the
catalogue and the suites cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Check:
    id: str
    section: str
    asserts: str

    @property
    def area(self) -> str:
        return ".".join(self.id.split(".")[:2])


_CHECKS = [
    # §2 streams
    Check("api.streams.create", "§2", "CreateStream echoes the stream with creationTime set"),
    Check("api.streams.get", "§2", "GetStream returns the created stream's fields"),
    Check("api.streams.list", "§2", "ListStreams and ListStreamsWithPrefix list exactly the streams"),
    Check("api.streams.delete", "§2", "DeleteStream removes it; a second delete is 5/200"),
    Check("api.streams.delete-ignore-non-exist", "§2", "ignoreNonExist deletes nothing, no error"),
    Check("api.streams.delete-with-subscription", "§6", "delete with subscriptions: 9/202; force works"),
    Check("api.errors.stream-exists", "§6", "creating an existing stream fails 6/201"),
    Check("api.errors.stream-not-found", "§6", "GetStream of an unknown stream fails 5/200"),
    Check("api.errors.invalid-stream-name", "§2", "names breaking 1-255/letter-first/alnum-_- under every reading of 'letter': 3/204"),
    Check("api.streams.unicode-names", "§2", "names of non-ASCII letters/digits: all accepted (round-trip) or all 3/204, nothing else"),
    Check("api.errors.invalid-shard-count", "§2", "shardCount 0 fails 3/205"),
    Check("api.errors.invalid-replication-factor", "§2", "replicationFactor 0 fails 3/203"),
    # §2 shards and keys
    Check("api.shards.key-ranges", "§2", "N shards split [0,2^128-1] evenly, decimal bounds, last ends at max"),
    Check("api.shards.fields", "§2", "shards carry the stream name, unique ids, epoch and isActive=true"),
    Check("api.shards.same-on-every-node", "§2", "ListShards is identical from every node"),
    Check("api.shards.unknown-stream", "§2", "ListShards of an unknown stream fails"),
    Check("api.keys.md5-rule", "§2", "a key's records land in the shard whose range holds MD5(key)"),
    # §1 records
    Check("api.append.record-ids", "§1", "batchSize ids {shard, batchId, 0..n-1}; batch ids increase"),
    Check("api.append.publish-time", "§1", "read paths carry the store's append time as publishTime"),
    Check("api.append.size-limit", "§1", "a batch over the record size limit fails 3/207"),
    Check("api.append.empty-batch", "§1", "batchSize 0 or an empty payload fails 3/206"),
    Check("api.append.unknown-stream", "§1", "append to an unknown stream or shard fails"),
    Check("api.append.compression", "§1", "none/gzip/zstd batches read back byte-for-byte"),
    Check("api.append.json-payload", "§1", "JSON records (binary Struct) round-trip with their flag"),
    Check("api.append.attributes-keys", "§1", "keys and attributes round-trip"),
    Check("api.append.tail", "§1", "GetTailRecordId returns the last appended batch"),
    Check("api.append.trim", "§1", "TrimShard hides records up to the trim point from earliest reads"),
    # §3 cluster and lookups
    Check("api.cluster.describe", "§3", "DescribeCluster: protocol 0.1.0, every node once, all Running"),
    Check("api.cluster.same-view", "§3", "every node's DescribeCluster lists the same members"),
    Check("api.lookup.shard", "§3", "LookupShard echoes the shard id; all nodes name the same owner"),
    Check("api.lookup.key", "§3", "LookupKey names the same node from every node"),
    Check("api.lookup.resource", "§3", "LookupResource(ResShard) agrees with LookupShard on every node"),
    Check("api.lookup.subscription", "§3", "LookupSubscription echoes the id; owner agreed by all nodes"),
    Check("api.lookup.shard-reader", "§3", "LookupShardReader echoes the id; owner agreed by all nodes"),
    Check("api.lookup.owner-is-member", "§3", "every owner named is a member of DescribeCluster"),
    # §4 subscriptions
    Check("api.subscriptions.crud", "§4", "create/get/list/prefix/check-exist/delete of a subscription"),
    Check("api.errors.subscription-exists", "§6", "creating an existing subscription fails 6/301"),
    Check("api.errors.subscription-on-missing-stream", "§6", "subscription on a missing stream: 9/302"),
    Check("api.errors.subscription-not-found", "§6", "unknown subscription: 5/300 (get and fetch)"),
    Check("api.subscriptions.earliest", "§4", "EARLIEST delivers every record already in the stream"),
    Check("api.subscriptions.latest", "§4", "LATEST delivers only records appended after creation"),
    Check("api.subscriptions.record-ids", "§4", "one response per batch; ids match the records"),
    Check("api.subscriptions.redelivery", "§4", "after the ack timeout only unacked records come back"),
    Check("api.subscriptions.no-redelivery-of-acked", "§4", "acked records are not delivered again"),
    Check("api.subscriptions.max-unacked", "§4", "delivery pauses within one read (<= 100 batches) past maxUnackedRecords; acks resume it"),
    Check("api.subscriptions.reassignment", "§4", "a leaving consumer's shards move; its in-flight records reach the others by their ack deadline"),
    Check("api.subscriptions.duplicate-consumer", "§4", "a second consumer with the same name fails"),
    Check("api.subscriptions.delete-with-consumers", "§4", "delete with live consumers: 9/305; force works"),
    Check("api.subscriptions.per-shard-order", "§4", "each shard's batches arrive in increasing order"),
    # §5 shard readers and read streams
    Check("api.readers.earliest", "§5", "a reader from EARLIEST reads every batch in order"),
    Check("api.readers.latest", "§5", "a reader from LATEST sees only later batches"),
    Check("api.readers.record-offset", "§5", "a reader from a record id starts at that batch"),
    Check("api.readers.timestamp", "§5", "a reader from a timestamp starts at the first later batch"),
    Check("api.readers.max-records", "§5",
          "ReadShard returns at most maxRecords batches and the reader's position advances"),
    Check("api.readers.blocking-timeout", "§5", "ReadShard on an empty shard blocks about `timeout` ms"),
    Check("api.readers.lifecycle", "§5", "list shows readers; delete removes; reading a deleted one fails"),
    Check("api.errors.reader-exists", "§5", "a second reader with the same id fails ALREADY_EXISTS"),
    Check("api.errors.reader-missing-offset", "§5", "CreateShardReader without an offset fails 3/208"),
    Check("api.errors.reader-unknown-shard", "§5", "a reader on an unknown shard fails NOT_FOUND"),
    Check("api.read.shard-stream-bounds", "§5", "ReadShardStream honours from/until/maxReadBatches"),
    Check("api.read.stream", "§5", "ReadStream returns every shard's batches in per-shard order"),
    Check("api.read.single-shard-stream", "§5",
          "ReadSingleShardStream honours from/until/maxReadBatches; a multi-shard stream fails"),
    Check("api.read.stream-bounds", "§5", "ReadStream honours timestamp from/until and maxReadBatches"),
    Check("api.read.stream-by-key", "§5", "ReadStreamByKey returns exactly that key's records"),
    Check("api.read.stream-by-key-bounds", "§5",
          "ReadStreamByKey honours from/until record offsets and readRecordCount grants"),
    # §6 errors: the remaining codes, each with its gRPC status and JSON code
    Check("api.errors.json-shape", "§6",
          "error messages are JSON {error: int, message: str, extra} with the documented code"),
    Check("api.errors.invalid-subscription-id", "§6", "a subscription id breaking the name rules: 3/304"),
    Check("api.errors.invalid-reader-id", "§6", "a shard reader id breaking the name rules: 3/900"),
    Check("api.errors.reader-offset-conflict", "§6",
          "a reader offset naming another shard's record: 3/901"),
    Check("api.errors.reader-unknown", "§5", "ReadShard of an unknown reader fails FAILED_PRECONDITION"),
    Check("api.errors.wrong-server", "§3",
          "ownership-checked calls on a non-owner fail 9/800 and change nothing"),
    # §7 admin
    Check("api.admin.status", "§7", "SendAdminCommand 'server status' tables every node as Running"),
    Check("api.admin.ready", "§7", "SendAdminCommand 'server ready' says the cluster is ready"),
    Check("api.admin.unknown-command", "§7", "an unknown admin command answers an \"error\" result or INVALID_ARGUMENT"),
    Check("api.auth.token", "§6", "with tokens: no or a wrong token is UNAUTHENTICATED; `Basic <token>` works"),
    # properties and model
    Check("api.properties.stream-names", "§2", "generated names: valid under every reading accepted, invalid under every reading 3/204"),
    Check("api.properties.shard-ranges", "§2", "for generated shard counts the key space splits evenly"),
    Check("api.properties.key-routing", "§2", "generated keys: one shard each, by MD5, same on every node"),
    Check("api.properties.payload-roundtrip", "§1", "generated payloads/attributes/batches round-trip"),
    Check("api.model.state-machine", "§1-§5", "random API programs agree with an in-memory model"),
    # HStream IO: Airbyte connector acceptance (Airbyte protocol, spec/check/discover/read/write)
    Check("io.source.spec", "Airbyte", "spec is a valid JSON schema; a good config validates against it"),
    Check("io.source.check", "Airbyte", "check succeeds with a good config"),
    Check("io.source.check-bad-config", "Airbyte", "check with a bad config is CONNECTION_STATUS FAILED, not a crash"),
    Check("io.source.read-bad-config", "Airbyte", "read with a bad config fails with a trace message, not garbage"),
    Check("io.source.discover", "Airbyte", "discover gives a valid catalog"),
    Check("io.source.read", "Airbyte", "records conform to their stream schemas; STATE messages are well formed"),
    Check("io.source.read-repeatable", "Airbyte", "two full-refresh reads agree"),
    Check("io.source.incremental", "Airbyte", "a read from the last STATE returns only newer records"),
    Check("io.destination.spec", "Airbyte", "the destination's spec is a valid JSON schema"),
    Check("io.destination.check", "Airbyte", "the destination's check succeeds / fails cleanly"),
    Check("io.destination.state-after-commit", "Airbyte", "STATE is echoed only after the records before it are committed"),
    Check("io.destination.write", "Airbyte", "written records land in the destination by primary key"),
    Check("io.sync.accounted", "Airbyte", "a source→destination sync accounts for every record by primary key"),
]

CATALOGUE: dict[str, Check] = {check.id: check for check in _CHECKS}
assert len(CATALOGUE) == len(_CHECKS), "duplicate conformance ids"


def lookup(check_id: str) -> Check:
    try:
        return CATALOGUE[check_id]
    except KeyError:
        raise KeyError(
            f"conformance id {check_id!r} is not in harness/catalogue.py; add it there first"
        ) from None
