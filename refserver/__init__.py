"""A reference HServer: HStreamDB's gRPC API and SWIM gossip over a durable store.

Started like the real server (`python -m refserver --server-id ...`), with its store as a
separate process (`python -m refserver.store`). The harness never imports this package's
internals; it runs it over the network like any other target.
"""

__version__ = "0.1.0"
