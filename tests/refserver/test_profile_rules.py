"""The profiles as data, and the pure rules they switch: every hstream-0.20 behaviour names
the HStreamDB source it mirrors, the defaults are the real server's, and the formulas and
checks (retransmit limit, detection bound, names, tokens) differ as real-hstream.md says."""

from __future__ import annotations

import argparse
import math

import grpc
import pytest

from refserver.api.names import valid_name
from refserver.auth import TokenAuthInterceptor
from refserver.gossip.config import GossipConfig
from refserver.membership import NodeAddress
from refserver.profiles import HSTREAM_0_20, PROFILES, PROTOCOL, UnknownProfile, parse_profile

ME = NodeAddress(1, "127.0.0.1", 6570, "127.0.0.1", 6571)


def test_profiles_by_name_and_unknown_names() -> None:
    assert set(PROFILES) == {"protocol", "hstream-0.20"}
    assert parse_profile("hstream-0.20") is HSTREAM_0_20
    with pytest.raises(UnknownProfile, match="known profiles: hstream-0.20, protocol"):
        parse_profile("hstream")


def test_every_real_behaviour_names_its_source_and_protocol_has_none() -> None:
    assert PROTOCOL.mirrors() == {}
    mirrors = HSTREAM_0_20.mirrors()
    assert set(mirrors) == set(HSTREAM_0_20.switches()), "every switch is on in hstream-0.20"
    for switch, source in mirrors.items():
        assert ".hs" in source or ".hpp" in source or ".hsc" in source, (switch, source)
        assert any(ch.isdigit() for ch in source.rsplit(":", 1)[-1]), (switch, source)
    assert HSTREAM_0_20.auth_refusal == grpc.StatusCode.CANCELLED
    assert PROTOCOL.auth_refusal == grpc.StatusCode.UNAUTHENTICATED
    assert (PROTOCOL.subscription_read_batches, HSTREAM_0_20.subscription_read_batches) == (16, 100)


@pytest.mark.parametrize("profile", [PROTOCOL, HSTREAM_0_20], ids=lambda p: p.name)
def test_unset_gossip_flags_take_the_real_defaults(profile: object) -> None:
    parser = argparse.ArgumentParser()
    GossipConfig.add_cli_arguments(parser)
    args = parser.parse_args([])
    config = GossipConfig.from_args(args, ME, frozenset(), profile)  # type: ignore[arg-type]
    assert config.profile is profile
    real = (2.0, 0.5, 1.0, 3, 4, 30.0, 1)
    assert (
        config.probe_interval,
        config.roundtrip_timeout,
        config.gossip_interval,
        config.fanout,
        config.retransmit_mult,
        config.reconnect_interval,
        config.indirect_checks,
    ) == real
    assert GossipConfig.flags_given(args) == []
    fast = parser.parse_args(["--probe-interval-ms", "3000", "--gossip-fanout", "2"])
    assert GossipConfig.flags_given(fast) == ["--probe-interval-ms", "--gossip-fanout"]
    assert GossipConfig.from_args(fast, ME, frozenset(), profile).probe_interval == 3.0  # type: ignore[arg-type]


def test_retransmit_limit_real_formula() -> None:
    config = GossipConfig(self_node=ME, seeds=[("127.0.0.1", 6571)], profile=HSTREAM_0_20)
    # 4 * ceil(ln(n + 2)), n = the other alive members
    assert [config.retransmit_limit_ln(n) for n in (0, 1, 5, 6, 18)] == [4, 8, 8, 12, 12]
    assert config.retransmit_limit_ln(19) == 4 * math.ceil(math.log(21)) == 16
    # protocol: mult * ceil(log10(cluster size + 1)), cluster size = n + 1
    assert [config.retransmit_limit(n + 1) for n in (0, 1, 5, 18)] == [4, 4, 4, 8]


def test_detection_bound_has_no_suspicion_term_when_the_prober_confirms() -> None:
    base = {"self_node": ME, "seeds": [("127.0.0.1", 6571)], "probe_interval": 1.0}
    protocol = GossipConfig(**base)  # type: ignore[arg-type]
    real = GossipConfig(**base, profile=HSTREAM_0_20)  # type: ignore[arg-type]
    assert protocol.failure_detection_bound(3) - real.failure_detection_bound(3) == (
        protocol.suspicion_timeout(3)
    )


@pytest.mark.parametrize(
    "name, real, protocol",
    [
        ("orders_2024-x", True, True),
        ("Ünïcode", True, False),
        ("流", True, False),
        ("a١", True, False),  # ARABIC-INDIC DIGIT ONE: Nd
        ("aⅫ", True, False),  # ROMAN NUMERAL TWELVE: Nl, isAlphaNum
        ("a\u0301", False, False),  # a combining mark is not isAlphaNum
        ("١a", False, False),  # a digit first is not isLetter
        ("-a", False, False),
        ("", False, False),
        ("a" * 255, True, True),
        ("a" * 256, False, False),
        ("a\n", False, False),
    ],
)
def test_names(name: str, real: bool, protocol: bool) -> None:
    assert valid_name(name, unicode_rule=True) is real
    assert valid_name(name, unicode_rule=False) is protocol


def test_tokens_verbatim_or_decoded() -> None:
    tokens = frozenset({"hstream:hstream"})
    protocol = TokenAuthInterceptor(tokens)
    real = TokenAuthInterceptor(tokens, HSTREAM_0_20)
    for header, by_protocol, by_real in [
        ("Basic hstream:hstream", True, True),
        ("Basic aHN0cmVhbTpoc3RyZWFt", True, False),  # base64 of the listed token
        ("basic hstream:hstream", True, False),
        ("Basic  hstream:hstream", True, False),
        ("Bearer hstream:hstream", False, False),
    ]:
        metadata = [("authorization", header)]
        assert protocol.admits(metadata) is by_protocol, header
        assert real.admits(metadata) is by_real, header
    assert not real.admits([]) and not protocol.admits([])
