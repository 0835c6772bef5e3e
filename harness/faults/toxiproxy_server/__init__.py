"""A Toxiproxy-compatible server in Python: REST API v2.x, TCP proxies, the standard toxics.

Used when no real Toxiproxy is available. `harness.faults.toxiproxy` starts it as a process
(`python -m harness.faults.toxiproxy --host H --port P`) and talks to it over HTTP exactly as
it would to the Go server, so the same suites run against either.

Modules: `toxics` (what each toxic does to a link), `links` (a proxied connection's two
directions and their toxic chains), `proxies` (proxy state and Toxiproxy's errors), `api`
(routes and HTTP), `server` (the process: loop, HTTP thread, lifetime).
"""
