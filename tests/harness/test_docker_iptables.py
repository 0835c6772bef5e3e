"""Grudges to iptables rules (pure): directions, the proxy path, and replacement."""

from __future__ import annotations

from harness.faults.iptables import IN_CHAIN, OUT_CHAIN, NodeAddress, Ruleset, grudge_rules
from harness.faults.partition import isolate

ADDRESSES = {
    1: NodeAddress("172.28.5.11", (20000, 20001)),
    2: NodeAddress("172.28.5.12", (20002, 20003)),
    3: NodeAddress("172.28.5.13", (20004, 20005)),
}
PROXY = "172.28.5.2"


def test_one_way_grudge_drops_b_to_a_at_both_ends() -> None:
    rules = grudge_rules({1: frozenset({2})}, ADDRESSES, proxy_ip=None)
    assert rules[1] == Ruleset(inbound=("-s 172.28.5.12 -j DROP",), outbound=())
    assert rules[2] == Ruleset(inbound=(), outbound=("-d 172.28.5.11 -j DROP",))
    assert rules[3] == Ruleset()


def test_proxied_path_is_cut_by_listen_ports() -> None:
    rules = grudge_rules({1: frozenset({2})}, ADDRESSES, proxy_ip=PROXY)
    # 2's requests to 1's proxies are dropped where they leave 2 ...
    assert f"-d {PROXY} -p tcp --dport 20000 -j DROP" in rules[2].outbound
    assert f"-d {PROXY} -p tcp --dport 20001 -j DROP" in rules[2].outbound
    # ... and what 2 sends back through its own proxies is dropped where it reaches 1.
    assert f"-s {PROXY} -p tcp --sport 20002 -j DROP" in rules[1].inbound
    assert f"-s {PROXY} -p tcp --sport 20003 -j DROP" in rules[1].inbound
    assert rules[3] == Ruleset()


def test_isolation_is_symmetric_and_leaves_the_majority_connected() -> None:
    rules = grudge_rules(isolate(1, [1, 2, 3]), ADDRESSES, proxy_ip=PROXY)
    for peer in (2, 3):
        assert f"-s {ADDRESSES[peer].ip} -j DROP" in rules[1].inbound
        assert f"-d {ADDRESSES[peer].ip} -j DROP" in rules[1].outbound
        assert f"-s {ADDRESSES[1].ip} -j DROP" in rules[peer].inbound
        other = 5 - peer
        assert not any(ADDRESSES[other].ip in rule for rule in rules[peer].inbound)
        assert not any(ADDRESSES[other].ip in rule for rule in rules[peer].outbound)


def test_restore_input_declares_both_chains_so_a_reload_replaces_them() -> None:
    text = grudge_rules({1: frozenset({2})}, ADDRESSES)[1].restore_input()
    lines = text.splitlines()
    assert lines[0] == "*filter" and lines[-1] == "COMMIT"
    assert f":{IN_CHAIN} - [0:0]" in lines and f":{OUT_CHAIN} - [0:0]" in lines
    assert f"-A {IN_CHAIN} -s 172.28.5.12 -j DROP" in lines
    empty = Ruleset().restore_input().splitlines()
    assert [line for line in empty if line.startswith("-A")] == []
