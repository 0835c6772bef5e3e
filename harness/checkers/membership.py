"""Membership convergence checker: do the nodes' views follow the truth, and how fast?

Inputs (shapes in harness.history):

* samples ``f="view"``: ``{"observer": id, "view": {member_id: state}}`` taken by a probe;
  states alive/suspect/dead (HServer's Running/Unavailable/Dead and Starting are mapped).
  A member missing from a view counts as dead by default (gossip implementations drop
  confirmed-dead members); pass ``absent="suspect"`` for probes of HServer's
  DescribeCluster, whose suspects are in neither list.
* the truth, from nemesis completions: their value's ``"down"`` and ``"up"`` lists of ids
  (what the fault made unreachable or brought back; see harness.nemesis). A member
  whose first appearance in the truth is coming *up* (never having gone down) **joins**
  then (a brand-new node, the nemesis' ``join``): before that it is no member, and a
  correct view lists it as dead or not at all. Everything else is alive from the start.

The run splits into *epochs* at every change of the truth. An epoch **agrees at t** when
every observer that is up has a view (taken after it last came up) in which every up member
is alive and every down member is dead; time to full agreement is measured to the first
such t. "And stays so": agreement lost again later in the epoch (a false suspicion, a flap)
shows as `stable_from_s` / `disagreeing_at_end_s`. Figures:

* per down event: time to first suspicion (any up observer sees the node not alive) and to
  confirmed dead (sees it dead), from the nemesis completion;
* per epoch: time to full agreement;
* **false suspicions**: an observer that had seen a member alive since the member's last
  truth change, later seeing it not alive while it still is. A member that a nemesis op in
  flight is taking down (named in its invoke's ``"down"``) may be gone at any point before
  the op completes -- a graceful stop can be announced and seen before `docker stop`
  returns -- so seeing it not alive then is no suspicion;
* **flaps**: every change of an observer's alive/not-alive opinion of a member beyond the
  first within one truth period of that member (one change per real event is expected).

An observer that comes back up (the truth's "up" for it: a restart, a healed partition, a
join) **starts afresh**: what it saw in its previous life is forgotten, and it is
**rejoining** until its first view, taken after it came up, in which every member that is
up (itself aside) is alive. While rejoining, a member missing from its view or not alive in
it is no suspicion, no flap and no detection (`first_suspicion_s`, `confirmed_dead_s`): a
restarted SWIM member begins with an empty view (or only its seeds) and assembles the
membership from rumours of different ages -- it can learn a member alive from one message
and then apply an older suspect rumour at the same incarnation that the others have long
refuted, which is the join catching up, not its failure detector speaking. "Itself plus one
other member alive" would end rejoining after the first seed answered, while most of the
membership still arrives by gossip; the full view is the first point at which the observer
has caught up with the membership and later suspicions are its own. A stale view carried
over the restart is judged as it reads: if it lists every up member alive the observer has
rejoined (what it tells clients is that view), so a later drop of a live member is a false
suspicion. Rejoining never hides slow convergence: a rejoining observer's view has an up
member not alive, so it does not agree, and the epoch's agreement time runs until it has
caught up.

Verdict against `bound_s` (see `swim_bounds` for a bound derived from the protocol period):
an epoch that first agreed later than the bound (**slow_convergence**), or that lasted longer
than the bound without agreeing, or that ended disagreeing for longer than the bound
(**not_converged**) is a failure; epochs shorter than the bound that never agreed are
counted only (`undecided_epochs`). Without a bound the verdict is True when the last epoch
ended in agreement, else "unknown". False suspicions fail the check only with
`false_suspicions_fail=True`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from harness.checkers.result import NS_PER_S, Result, add_anomaly, quantiles, without_gc
from harness.checkers.table import table_of
from harness.history import History, Op, as_ops

NAME = "membership"

_STATE = {
    "alive": "alive",
    "running": "alive",
    "suspect": "suspect",
    "suspected": "suspect",
    "unavailable": "suspect",
    "starting": "suspect",
    "dead": "dead",
    "confirm": "dead",
    "confirmed": "dead",
}


def normalise_state(state: Any) -> str:
    """alive / suspect / dead from a state name or HServer NodeState number (0..3)."""
    if isinstance(state, int):
        return {0: "suspect", 1: "alive", 2: "suspect", 3: "dead"}.get(state, "suspect")
    return _STATE.get(str(state).strip().lower(), "suspect")


def swim_bounds(
    protocol_period_s: float,
    n_nodes: int,
    *,
    gossip_interval_s: float | None = None,
    suspicion_periods: float = 1.0,
    sample_interval_s: float = 0.0,
    retransmit_mult: int | None = None,
) -> dict[str, float]:
    """Expected first detection and a bound on full agreement for SWIM with period T.

    * First detection: every member probes one random peer per period, so a failed member
      escapes all n-1 probers in one period with probability (1 - 1/(n-1))^(n-1) ~ 1/e;
      the number of periods until it is probed is geometric with mean 1/(1 - 1/e) =
      e/(e-1) ~ 1.58. Missing k periods in a row has probability ~ e^-k, so 7 periods bound
      it at 1e-3; with shuffled round-robin targets a member is probed at least once in
      2(n-1) periods, plus the period the probe itself takes.
    * Suspicion to confirmation: `suspicion_periods` (HServer confirms within the probe
      period: 1; memberlist-style suspicion: suspicion_mult * max(1, log10 n)).
    * Dissemination: infection-style gossip reaches all n members in about log2(n) rounds
      of the gossip interval, plus the round in flight. With `retransmit_mult` the bound is
      the retransmission budget instead, retransmit_mult * ceil(ln(n + 2)) rounds: an update
      stops travelling after that many sends, so it has reached everyone by then or never.
    * The probe that samples views adds up to one sampling interval.
    """
    if protocol_period_s <= 0 or n_nodes < 1:
        raise ValueError("protocol_period_s must be > 0 and n_nodes >= 1")
    gossip = protocol_period_s if gossip_interval_s is None else gossip_interval_s
    n = max(n_nodes, 2)
    e = math.e
    detection_periods = min(7, 2 * (n - 1) + 1)
    if retransmit_mult is None:
        dissemination_s = (math.ceil(math.log2(n)) + 1) * gossip
    else:
        dissemination_s = retransmit_mult * math.ceil(math.log(n_nodes + 2)) * gossip
    agreement = (
        (detection_periods + suspicion_periods) * protocol_period_s
        + dissemination_s
        + sample_interval_s
    )
    return {
        "expected_first_detection_s": round(e / (e - 1) * protocol_period_s, 3),
        "detection_bound_s": detection_periods * protocol_period_s,
        "dissemination_bound_s": dissemination_s,
        "agreement_bound_s": round(agreement, 3),
    }


@without_gc
def check(
    history: History | Iterable[Op],
    *,
    bound_s: float | None = None,
    nodes: Iterable[Any] | None = None,
    false_suspicions_fail: bool = False,
    absent: str = "dead",
    select: Callable[[Op], bool] | None = None,
    up_bound_s: float | None = None,
) -> Result:
    """Judge membership views against the nemesis' truth; see the module docstring.

    `up_bound_s`, where given, bounds the epochs that began with members coming back up
    (a healed partition, a resumed node) instead of `bound_s`: members that were confirmed
    dead come back through the target's reconnect path, whose period (30 s in HStreamDB
    v0.20) has nothing to do with how fast it detects a failure.

    `absent` is what a member missing from a view means: "dead" (gossip implementations
    that drop confirmed-dead members) or "suspect" (HServer's DescribeCluster, whose
    suspects are in neither list, when the probe does not say so itself).
    """
    if absent not in ("dead", "suspect"):
        raise ValueError(f"absent must be 'dead' or 'suspect', not {absent!r}")
    ops = as_ops(history)
    if select is not None:
        ops = [op for op in ops if select(op)]
    result = Result(valid=True, checker=NAME)
    start = ops[0].time if ops else 0
    end = ops[-1].time if ops else 0
    # Only view samples and the nemesis' truth speak of membership. (Where another checker
    # of check_all has taken the appends as columns and no append is the nemesis', the
    # appends, most of a history, are passed over without a look.)
    table = table_of(ops) if select is None else None
    appends = table.appends_taken() if table is not None else None
    kept: Iterable[Op] = ops
    if table is not None and appends is not None and "nemesis" not in appends.process_names:
        kept = map(ops.__getitem__, table.without("append"))
    ops = [op for op in kept if op.f == "view" or op.process == "nemesis"]

    members: set[str] = {str(n) for n in nodes} if nodes is not None else set()
    n_views = 0
    for op in ops:
        v = op.value
        if not isinstance(v, dict):
            continue
        if op.f == "view" and op.type == "ok":
            n_views += 1
            members.add(str(v.get("observer")))
            members.update(str(m) for m in (v.get("view") or {}))
        elif op.process == "nemesis" and op.type != "invoke":
            members.update(str(m) for m in v.get("down") or ())
            members.update(str(m) for m in v.get("up") or ())
    if not n_views:
        result.valid = "unknown"
        result.notes.append("no view samples: membership was not observed")
        return result
    member_list = sorted(members)

    # Members that join: they come up before anything ever took them down.
    not_joined: set[str] = set()
    in_truth: set[str] = set()
    for op in ops:
        if op.process == "nemesis" and op.type != "invoke" and isinstance(op.value, dict):
            in_truth.update(str(m) for m in op.value.get("down") or ())
            not_joined.update(str(m) for m in op.value.get("up") or () if str(m) not in in_truth)
            in_truth.update(not_joined)

    down: set[str] = set(not_joined)
    latest: dict[str, dict[str, str]] = {}
    bad: set[str] = set(member_list) - down  # up observers without a correct view
    since: int | None = None  # start of the current stretch of agreement
    first_agreement: int | None = None
    lost_at = start  # when agreement was last lost (or the epoch began without it)
    epoch_start = start
    epoch_fault: Any = "start"
    epoch_came_up = False  # the epoch began with members coming back up
    epochs: list[dict[str, Any]] = []
    episodes: list[dict[str, Any]] = []
    open_down: dict[str, dict[str, Any]] = {}
    alive_seen: set[tuple[str, str]] = set()  # (observer, member) saw alive since truth change
    rejoining: set[str] = set()  # observers back up whose view has not yet caught up
    opinion: dict[tuple[str, str], bool] = {}
    changes: dict[tuple[str, str], int] = {}
    false_suspicions = 0
    in_flight: set[str] = set()  # members the nemesis op in flight is taking down
    flaps = 0

    def mismatches(observer: str, view: dict[str, str]) -> int:
        # An observer's entry for itself says nothing about what it learnt from gossip.
        wrong = 0
        for m in member_list:
            if m == observer:
                continue
            if m in not_joined:
                # no member yet: "absent" says nothing was learnt about it, which is right
                wrong += view.get(m, "dead") != "dead"
                continue
            st = view.get(m, absent)
            if (st != "alive") if m not in down else (st != "dead"):
                wrong += 1
        return wrong

    def close_epoch(t: int) -> None:
        epochs.append(
            {
                "start_s": _rel(epoch_start, start),
                "end_s": _rel(t, start),
                "after": epoch_fault,
                "came_up": epoch_came_up,
                "down": sorted(down),
                "observers": len(member_list) - len(down),
                "agreement_s": _rel(first_agreement, epoch_start),
                "stable_from_s": _rel(since, epoch_start),
                "disagreeing_at_end_s": None if since is not None else _rel(t, lost_at),
                "duration_s": _rel(t, epoch_start),
            }
        )

    for op in ops:
        v = op.value
        if not isinstance(v, dict):
            continue
        t = op.time
        if op.process == "nemesis" and op.type == "invoke":
            in_flight = {str(m) for m in v.get("down") or ()}
            continue
        if op.process == "nemesis" and op.type != "invoke":
            in_flight = set()
            went_down = {str(m) for m in v.get("down") or ()} - down
            came_up = {str(m) for m in v.get("up") or ()} & down
            if not went_down and not came_up:
                continue
            close_epoch(t)
            epoch_start, epoch_fault, epoch_came_up = t, op.f, bool(came_up)
            for m in went_down | came_up:
                for o in member_list:
                    alive_seen.discard((o, m))
                    changes.pop((o, m), None)
            for m in went_down:
                down.add(m)
                latest.pop(m, None)
                for o in member_list:
                    opinion.pop((m, o), None)
                    changes.pop((m, o), None)
                episode: dict[str, Any] = {
                    "node": m,
                    "event": "down",
                    "fault": op.f,
                    "at_s": _rel(t, start),
                    "first_suspicion_s": None,
                    "confirmed_dead_s": None,
                    "_t": t,
                }
                episodes.append(episode)
                open_down[m] = episode
            for m in came_up:
                down.discard(m)
                open_down.pop(m, None)
                event = "join" if m in not_joined else "up"
                not_joined.discard(m)
                episodes.append({"node": m, "event": event, "fault": op.f, "at_s": _rel(t, start)})
                # Its knowledge starts afresh: nothing it saw before counts any more.
                rejoining.add(m)
                for x in member_list:
                    alive_seen.discard((m, x))
                    opinion.pop((m, x), None)
                    changes.pop((m, x), None)
            bad = {
                o
                for o in member_list
                if o not in down and (o not in latest or mismatches(o, latest[o]))
            }
            since = first_agreement = t if not bad else None
            lost_at = t
            continue
        if op.f != "view" or op.type != "ok":
            continue
        o = str(v.get("observer"))
        if o in down:
            continue
        view = {str(m): normalise_state(s) for m, s in (v.get("view") or {}).items()}
        latest[o] = view
        if o in rejoining and all(
            view.get(m, absent) == "alive" for m in member_list if m != o and m not in down
        ):
            rejoining.discard(o)
        if mismatches(o, view):
            bad.add(o)
            if since is not None:
                since, lost_at = None, t
        else:
            bad.discard(o)
            if not bad and since is None:
                since = t
                if first_agreement is None:
                    first_agreement = t
        if o in rejoining:
            # Not caught up yet (and so not agreeing either: an up member is not alive).
            continue
        for m, ep in open_down.items():
            if m == o:
                continue
            st = view.get(m, absent)
            if st != "alive" and ep["first_suspicion_s"] is None:
                ep["first_suspicion_s"] = _rel(t, ep["_t"])
            if st == "dead" and ep["confirmed_dead_s"] is None:
                ep["confirmed_dead_s"] = _rel(t, ep["_t"])
        for m in member_list:
            if m == o:
                continue
            is_alive = view.get(m, absent) == "alive"
            key = (o, m)
            before = opinion.get(key)
            opinion[key] = is_alive
            if before is not None and before != is_alive:
                n = changes.get(key, 0) + 1
                changes[key] = n
                if n > 1:
                    flaps += 1
            if m in down:
                continue
            if is_alive:
                alive_seen.add(key)
            elif key in alive_seen:
                alive_seen.discard(key)
                if m in in_flight:
                    continue  # the op taking it down may already have taken effect
                false_suspicions += 1
                add_anomaly(
                    result,
                    "false_suspicion",
                    {
                        "observer": o,
                        "member": m,
                        "state": view.get(m, "absent"),
                        "at_s": _rel(t, start),
                    },
                )
    close_epoch(end)

    undecided = 0
    for ep in epochs:
        if ep["observers"] == 0:
            continue
        agreement = ep["agreement_s"]
        disagreeing = ep["disagreeing_at_end_s"]
        bound = up_bound_s if ep["came_up"] and up_bound_s is not None else bound_s
        if agreement is None:
            if bound is not None and ep["duration_s"] >= bound:
                add_anomaly(result, "not_converged", {**ep, "bound_s": bound})
            else:
                undecided += 1
            continue
        if bound is not None and agreement > bound:
            add_anomaly(result, "slow_convergence", {**ep, "bound_s": bound})
        if bound is not None and disagreeing is not None and disagreeing >= bound:
            # Agreed once, then lost it for longer than the bound with no change of truth.
            add_anomaly(result, "not_converged", {**ep, "bound_s": bound})
    for ep in episodes:
        ep.pop("_t", None)

    for kind in ("not_converged", "slow_convergence", "false_suspicion"):
        result.counts.setdefault(kind, 0)
        result.anomalies.setdefault(kind, [])
    result.counts.update(
        views=n_views,
        members=len(member_list),
        epochs=len(epochs),
        converged_epochs=sum(1 for ep in epochs if ep["agreement_s"] is not None),
        undecided_epochs=undecided,
        flaps=flaps,
    )
    downs = [ep for ep in episodes if ep["event"] == "down"]
    result.figures.update(
        bound_s=bound_s,
        up_bound_s=up_bound_s,
        time_to_first_suspicion_s=quantiles(
            [ep["first_suspicion_s"] for ep in downs if ep["first_suspicion_s"] is not None]
        ),
        time_to_confirmed_dead_s=quantiles(
            [ep["confirmed_dead_s"] for ep in downs if ep["confirmed_dead_s"] is not None]
        ),
        time_to_agreement_s=quantiles(
            [ep["agreement_s"] for ep in epochs if ep["agreement_s"] is not None]
        ),
        never_suspected=sum(1 for ep in downs if ep["first_suspicion_s"] is None),
        episodes=episodes[:1000],
        epochs=epochs[:1000],
    )
    failed = result.counts["not_converged"] + result.counts["slow_convergence"]
    if false_suspicions_fail:
        failed += false_suspicions
    if failed:
        result.valid = False
    elif epochs[-1]["stable_from_s"] is None and epochs[-1]["observers"]:
        result.valid = "unknown"
        result.notes.append(
            f"the last epoch (from {epochs[-1]['start_s']} s) had not converged when the "
            "history ended" + ("" if bound_s is None else f", within bound {bound_s} s")
        )
    return result


def _rel(t: int | None, origin: int) -> float | None:
    return None if t is None else round((t - origin) / NS_PER_S, 3)
