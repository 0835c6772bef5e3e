"""The reference store process (`python -m refserver.store`): durable logs and metadata
shared by every refserver node, served over gRPC (`refserver.store.Store`)."""
