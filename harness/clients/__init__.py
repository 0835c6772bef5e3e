"""Client drivers: the official Python client, raw gRPC, and the official Erlang client,
all behind one JSON-lines protocol (PROTOCOL.md) so every checker judges every client."""
