"""`python -m refserver.settings_report [--profile NAME] [gossip flags]`: what a server
started with these flags runs with, as one JSON object.

The harness never imports the reference server; it asks this instead, so its bounds come
from what the server really uses (the profile's defaults overridden by the given flags),
and its findings from which of the profile's switches are on.
"""

from __future__ import annotations

import argparse
import json
import sys

from refserver.gossip.config import GossipConfig
from refserver.membership import NodeAddress
from refserver.profiles import PROFILES, UnknownProfile, parse_profile


def report(argv: list[str]) -> dict[str, object]:
    parser = argparse.ArgumentParser(prog="python -m refserver.settings_report")
    parser.add_argument("--profile", default="protocol")
    GossipConfig.add_cli_arguments(parser)
    args = parser.parse_args(argv)
    try:
        profile = parse_profile(args.profile)
    except UnknownProfile as error:
        parser.error(str(error))
    node = NodeAddress(id=1, host="127.0.0.1", port=6570, gossip_host="127.0.0.1",
                       gossip_port=6571)
    try:
        config = GossipConfig.from_args(args, node, frozenset(), profile)
    except ValueError as error:
        parser.error(str(error))
    return {
        "profile": profile.name,
        "gossip": {
            "probe_interval_s": config.probe_interval,
            "roundtrip_timeout_s": config.roundtrip_timeout,
            "gossip_interval_s": config.gossip_interval,
            "fanout": config.fanout,
            "retransmit_mult": config.retransmit_mult,
            "indirect_checks": config.indirect_checks,
            "reconnect_interval_s": config.reconnect_interval,
            "reconnect": "one-random" if profile.reconnect_one_random else "every-dead",
            # How a suspect becomes dead: after a suspicion timeout of
            # suspicion_mult * max(1, log10 n) probe intervals, or by the prober itself
            # once one probe interval passed without an ack.
            "confirmation": "one-probe-interval" if profile.confirm_after_probe
            else "suspicion-timeout",
            "suspicion_mult": config.suspicion_mult,
            "retransmit_limit": "mult*ceil(ln(n+2))" if profile.retransmit_ln
            else "mult*ceil(log10(n+1))",
        },
        "member_lists": "alive-only" if profile.alive_only_lists else "all-states",
        "membership_probe": "describe-cluster" if profile.no_cli_service else "cli-cluster",
        "switches": profile.mirrors(),
        "profiles": sorted(PROFILES),
    }


def main(argv: list[str] | None = None) -> int:
    print(json.dumps(report(sys.argv[1:] if argv is None else argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
