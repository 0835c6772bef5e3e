"""HStreamDB's gRPC API (`hstream.server.HStreamApi`) over the reference store.

`servicer.HStreamApiHandler` serves the service; the RPCs live by topic in `streams`
(streams, shards, appends), `readers` (shard readers and streaming reads), `cluster`
(DescribeCluster, lookups, admin) and `subscriptions` (subscriptions, StreamingFetch);
`ownership` decides which node owns what, `catalog` is the metadata schema.
"""
