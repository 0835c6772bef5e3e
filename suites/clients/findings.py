"""Known deviations of the official clients from the protocol baseline, in the words the
strict xfails carry (`@pytest.mark.client_deviation(client, FINDING)`): each was seen in
the client's own errors in the histories and driver logs of the tests that carry it."""

PYTHON_ONE_ADDRESS = (
    "hstreamdb 0.5.0 takes a single bootstrap address (insecure_client(host, port)): with a "
    "dead first address it cannot connect at all"
)
PYTHON_STALE_LOOKUP = (
    "hstreamdb 0.5.0 caches shard and subscription owners forever and append() is not "
    "retried: once the owner died every later append/consume goes to the dead node"
)

PYTHON_NO_CALL_DEADLINE = (
    "hstreamdb 0.5.0 sets no deadline on append(): against a paused owner the call never "
    "returns (the driver abandons it after its op deadline), and the owner cached before the "
    "pause is used again afterwards"
)

PYTHON_NO_ZSTD = (
    "hstreamdb 0.5.0 decodes only None and Gzip batches (NotImplementedError on Zstd), so it "
    "cannot read what the Erlang client or any zstd producer wrote"
)

PYTHON_LOSES_NODES = (
    "hstreamdb 0.5.0 drops a node from its channel map on every UNAVAILABLE "
    "(_switch_channel) and never adds it back: when every link fails it raises "
    "RuntimeError('No unavailable targets!'), then KeyError('<host:port>'), instead of the "
    "gRPC status, so a caller cannot tell an unknown outcome from a client bug"
)

ERLANG_TIMEOUT_WITHOUT_STATUS = (
    "hstreamdb_erl's producer turns a transport failure (a black-holed or reset client link) "
    "into a bare 'timeout' after its own batch retries, never the gRPC status: the caller "
    "cannot tell UNAVAILABLE from a slow server"
)

ERLANG_INTERNAL_ERROR_WHEN_DOWN = (
    "with every client link down, hstreamdb_erl fails appends with its internal error "
    "{cannot_access_shard,badarg} instead of a gRPC status"
)
