"""Which consumer of a subscription reads which shard (protocol page §4).

Each shard belongs to at most one consumer. A round (run every second, and when a
consumer joins or leaves) gives every unassigned shard to a waiting consumer (one with
no shard), else to the consumer with the fewest shards; then each consumer still waiting
takes one shard from the busiest consumer if that one holds more than one. Ties go to
the consumer that joined first, so a round is deterministic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def assign(
    shards: Sequence[int],
    current: Mapping[int, str],
    consumers: Sequence[str],
) -> dict[int, str]:
    """The new shard → consumer map.

    `consumers` are the live consumers in join order; entries of `current` naming a
    consumer that is gone or a shard that is not in `shards` are dropped.
    """
    order = {name: rank for rank, name in enumerate(consumers)}
    known = set(shards)
    result = {s: c for s, c in current.items() if c in order and s in known}
    if not consumers:
        return {}
    held: dict[str, list[int]] = {name: [] for name in consumers}
    for shard, consumer in sorted(result.items()):
        held[consumer].append(shard)

    def fewest() -> str:
        return min(consumers, key=lambda name: (len(held[name]), order[name]))

    for shard in sorted(s for s in shards if s not in result):
        # A waiting consumer has zero shards, so it is always the one with the fewest.
        taker = fewest()
        result[shard] = taker
        held[taker].append(shard)

    for newcomer in consumers:
        if held[newcomer]:
            continue
        busiest = max(consumers, key=lambda name: (len(held[name]), -order[name]))
        if len(held[busiest]) <= 1:
            break
        shard = held[busiest].pop()
        held[newcomer].append(shard)
        result[shard] = newcomer
    return result
