"""Grudges keep Jepsen's meanings: node -> the nodes whose traffic it drops."""

from __future__ import annotations

import random

import pytest

from harness.faults.partition import (
    GrudgeError,
    Partition,
    bisect,
    bridge,
    complete_grudge,
    components,
    halves,
    isolate,
    majorities_ring,
    normalize,
)

FIVE = [1, 2, 3, 4, 5]


def sees(grudge: dict[int, frozenset[int]], node: int, nodes: list[int]) -> set[int]:
    return {other for other in nodes if other not in grudge.get(node, frozenset())}


def test_bisect_puts_the_smaller_half_first() -> None:
    assert bisect(FIVE) == ([1, 2], [3, 4, 5])
    assert bisect([1, 2, 3, 4]) == ([1, 2], [3, 4])


def test_complete_grudge_cuts_between_components_only() -> None:
    assert complete_grudge([[1, 2], [3]]) == {
        1: frozenset({3}), 2: frozenset({3}), 3: frozenset({1, 2}),
    }
    with pytest.raises(GrudgeError, match="overlap"):
        complete_grudge([[1, 2], [2, 3]])


def test_halves_minority_and_majority() -> None:
    grudge = halves(FIVE)
    assert components(grudge, FIVE) == [frozenset({1, 2}), frozenset({3, 4, 5})]
    shuffled = halves(FIVE, random.Random(3))
    sizes = sorted(len(c) for c in components(shuffled, FIVE))
    assert sizes == [2, 3]
    assert halves(FIVE, random.Random(3)) == shuffled  # the seed reproduces it


def test_isolate_one_node_both_directions() -> None:
    grudge = isolate(3, FIVE)
    assert grudge[3] == frozenset({1, 2, 4, 5})
    assert all(grudge[n] == frozenset({3}) for n in (1, 2, 4, 5))
    with pytest.raises(GrudgeError, match="node 9 is not one of"):
        isolate(9, FIVE)


@pytest.mark.parametrize("n", [3, 4, 5, 6, 7, 9])
def test_majorities_ring_every_node_sees_a_distinct_majority(n: int) -> None:
    nodes = list(range(1, n + 1))
    grudge = majorities_ring(nodes, random.Random(n))
    majority = n // 2 + 1
    views = [frozenset(sees(grudge, node, nodes)) for node in nodes]
    for node, view in zip(nodes, views, strict=True):
        assert node in view and len(view) == majority, (node, view)
    if n > 3:  # with 3 nodes every majority of 2 overlaps; the ring still differs per node
        assert len(set(views)) == n, views


def test_majorities_ring_five_is_symmetric_neighbours() -> None:
    grudge = majorities_ring(FIVE)  # ring order 1..5: each sees itself and both neighbours
    assert sees(grudge, 1, FIVE) == {5, 1, 2}
    assert sees(grudge, 3, FIVE) == {2, 3, 4}
    for a in FIVE:
        for b in grudge[a]:
            assert a in grudge[b]


def test_bridge_node_talks_to_both_sides() -> None:
    grudge = bridge(FIVE)
    assert 3 not in grudge  # the bridge drops nobody
    assert all(3 not in dropped for dropped in grudge.values())  # and nobody drops it
    assert grudge[1] == frozenset({4, 5}) and grudge[4] == frozenset({1, 2})


def test_normalize_checks_node_ids() -> None:
    assert normalize({1: frozenset({2}), 2: frozenset()}, FIVE) == {1: frozenset({2})}
    with pytest.raises(GrudgeError, match=r"not in the cluster"):
        normalize({1: frozenset({7})}, FIVE)
    with pytest.raises(GrudgeError, match="against itself"):
        normalize({1: frozenset({1})}, FIVE)


def test_too_few_nodes_is_refused() -> None:
    with pytest.raises(GrudgeError, match="majorities_ring needs at least 3 nodes"):
        majorities_ring([1, 2])
    with pytest.raises(GrudgeError, match="repeat"):
        halves([1, 1, 2])


def test_partition_serialises_for_histories() -> None:
    assert Partition("isolate", isolate(1, [1, 2])).to_json() == {
        "kind": "isolate", "grudge": {"1": [2], "2": [1]},
    }
