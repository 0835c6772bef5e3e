"""Means of breaking things: Toxiproxy (toxics, proxies down), partitions (grudges, applied
with iptables). The nemesis (harness.nemesis) is what suites use to inject them."""
