"""Subscription delivery checker (StreamingFetch semantics).

Reads `subscribe`, `append`, `fetch`, `ack`, `consume` and `drain` ops (shapes in
harness.history). A record is identified by its record id, else its payload id. Per
subscription:

* **undelivered**: an append to the subscription's stream, acknowledged before the
  subscription's drain began (a `drain` op, or a `fetch` with `"final": true`, naming the
  subscription), that no consumer of the subscription ever received. For a subscription
  created with offset "latest", only appends invoked after it was created count. Without a
  drain the cut-off is the end of the history and undelivered appends make the verdict
  "unknown" rather than False (the run may just have stopped early).
* **not_redelivered**: a record delivered and not acknowledged within the ack timeout
  (plus `slack_s`, the server's expiry timer granularity) must be delivered again, to
  some consumer, before anyone acknowledges it, as long as the subscription still had
  activity (a fetch, ack or consumer event) after the deadline. The ack timeout comes from
  the `subscribe` op (`ack_timeout_s`) or the `ack_timeout_s` option; without either this
  rule is skipped (noted). Late redeliveries are measured, not judged:
  `redelivery_delay_s` is how long after its deadline each redelivery came.
* **acked_redelivered**: a record delivered again more than `grace_s` after an ack that
  certainly went out (the ack op completed `ok`) from a consumer that then stayed open for
  at least `grace_s` (its `consume` op had not completed, or no lifetime was recorded).
  An ack from a consumer that died right after may never have reached the server, and a
  redelivery already in flight when the ack was sent is inside the grace.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from harness.checkers.result import NS_PER_S, Result, add_anomaly, quantiles, without_gc
from harness.history import History, Op, as_ops

NAME = "subscription"
_SEQUENCES = (list, tuple)


def _record_key(rec: Any) -> Any:
    rid = rec.get("record_id")
    if isinstance(rid, _SEQUENCES) and len(rid) == 3:
        return (rid[0], rid[1], rid[2])
    return ("payload", rec.get("payload_id"))


@without_gc
def check(
    history: History | Iterable[Op],
    *,
    ack_timeout_s: float | None = None,
    slack_s: float | None = None,
    grace_s: float = 1.0,
    select: Callable[[Op], bool] | None = None,
) -> Result:
    """Judge subscription delivery; see the module docstring.

    `slack_s` defaults to max(1 s, ack timeout): servers scan for expired records on a timer.
    """
    ops = as_ops(history)
    if select is not None:
        ops = [op for op in ops if select(op)]
    result = Result(valid=True, checker=NAME)

    subs: dict[Any, dict[str, Any]] = {}
    # acknowledged appends: (stream or None, payload id, record key, invoke time, ack time)
    appends: list[tuple[Any, Any, Any, int, int]] = []
    append_invoked: dict[tuple[Any, Any], int] = {}
    deliveries: dict[tuple[Any, Any], list[tuple[int, Any]]] = {}
    delivered_pids: dict[Any, set[Any]] = {}
    # (sub, record) -> earliest ack time of any kind; earliest certain ack (time, consumer)
    first_ack: dict[tuple[Any, Any], int] = {}
    certain_ack: dict[tuple[Any, Any], tuple[int, Any]] = {}
    open_acks: dict[Any, list[tuple[int, Any, Any, list[Any]]]] = {}
    consumer_end: dict[tuple[Any, Any], int] = {}
    drain_at: dict[Any, int] = {}
    last_activity: dict[Any, int] = {}
    end = ops[-1].time if ops else 0

    for op in ops:
        f = op.f
        v = op.value
        if not isinstance(v, dict):
            continue
        t = op.time
        if f == "append":
            pid = v.get("payload_id")
            if op.type == "invoke":
                append_invoked[(op.process, pid)] = t
            elif op.type == "ok":
                began = append_invoked.pop((op.process, pid), t)
                appends.append((v.get("stream"), pid, _record_key(v), began, t))
            else:
                append_invoked.pop((op.process, pid), None)
        elif f == "subscribe" and op.type == "ok":
            sub = v.get("subscription", "")
            subs[sub] = {
                "stream": v.get("stream"),
                # The driver protocol names it ack_timeout (seconds, as ackTimeoutSeconds).
                "ack_timeout_s": v.get("ack_timeout_s", v.get("ack_timeout")),
                "offset": str(v.get("offset", "earliest")).lower(),
                "created": t,
            }
        elif f == "fetch" and op.type != "invoke":
            sub = v.get("subscription", "")
            subs.setdefault(sub, {})
            last_activity[sub] = t
            if v.get("final"):
                drain_at[sub] = min(drain_at.get(sub, t), t)
            default_consumer = v.get("consumer", op.process)
            pids = delivered_pids.setdefault(sub, set())
            for rec in v.get("records") or ():
                if not isinstance(rec, dict):
                    continue
                key = (sub, _record_key(rec))
                deliveries.setdefault(key, []).append((t, rec.get("consumer", default_consumer)))
                pid = rec.get("payload_id")
                if pid is not None:
                    pids.add(pid)
        elif f == "ack":
            sub = v.get("subscription", "")
            last_activity[sub] = t
            consumer = v.get("consumer", op.process)
            rids = [
                (r[0], r[1], r[2]) if isinstance(r, _SEQUENCES) and len(r) == 3 else r
                for r in v.get("record_ids") or ()
            ]
            if op.type == "invoke":
                for r in rids:
                    k = (sub, r)
                    if k not in first_ack:
                        first_ack[k] = t
                open_acks.setdefault(op.process, []).append((t, sub, consumer, rids))
                continue
            pending = open_acks.get(op.process)
            sent = pending.pop(0) if pending else (t, sub, consumer, rids)
            for r in sent[3]:
                k = (sent[1], r)
                if k not in first_ack:
                    first_ack[k] = sent[0]
                if op.type == "ok" and k not in certain_ack:
                    certain_ack[k] = (sent[0], sent[2])
        elif f == "consume" and op.type != "invoke":
            sub = v.get("subscription", "")
            last_activity[sub] = t
            consumer_end[(sub, v.get("consumer", op.process))] = t
        elif f == "drain" and op.type == "invoke":
            drain_at[v.get("subscription", "")] = t

    # 1. every acknowledged append delivered to some consumer
    undelivered_soft = 0
    for sub, info in subs.items():
        stream = info.get("stream")
        latest = info.get("offset") == "latest"
        created = info.get("created", 0)
        cutoff = drain_at.get(sub)
        pids = delivered_pids.get(sub, set())
        for a_stream, pid, rkey, began, acked in appends:
            if stream is not None and a_stream is not None and a_stream != stream:
                continue
            if latest and began < created:
                continue
            if pid in pids or (sub, rkey) in deliveries:
                continue
            example = {"subscription": sub, "payload_id": pid, "record_id": _as_list(rkey)}
            if cutoff is None:
                undelivered_soft += 1
                soft = result.anomalies.setdefault("undelivered_without_drain", [])
                if len(soft) < 100:
                    soft.append(example)
            elif acked < cutoff:
                add_anomaly(result, "undelivered", example)
    if undelivered_soft:
        result.counts["undelivered_without_drain"] = undelivered_soft
        result.notes.append(
            f"{undelivered_soft} acknowledged appends were never delivered and no drain op "
            "marks the end of the run: record a drain to judge them"
        )

    # 2 and 3: redelivery after the ack timeout, no redelivery after an ack
    delays: list[float] = []
    redeliveries = 0
    skipped_timeout: set[Any] = set()
    grace = int(grace_s * NS_PER_S)
    for (sub, rkey), ds in deliveries.items():
        redeliveries += len(ds) - 1
        timeout_s = subs.get(sub, {}).get("ack_timeout_s") or ack_timeout_s
        ack_time = first_ack.get((sub, rkey))
        if timeout_s is None:
            skipped_timeout.add(sub)
        else:
            timeout = int(float(timeout_s) * NS_PER_S)
            slack_for = slack_s if slack_s is not None else max(1.0, float(timeout_s))
            slack = int(slack_for * NS_PER_S)
            for i, (t_d, consumer) in enumerate(ds):
                deadline = t_d + timeout
                unacked_at_deadline = ack_time is None or ack_time > deadline
                if i + 1 < len(ds):
                    if unacked_at_deadline:
                        delays.append(max(0, ds[i + 1][0] - deadline) / NS_PER_S)
                    continue
                if ack_time is not None and ack_time <= deadline + slack:
                    break
                window_end = min(
                    ack_time if ack_time is not None else end, last_activity.get(sub, end)
                )
                if window_end > deadline + slack:
                    add_anomaly(
                        result,
                        "not_redelivered",
                        {
                            "subscription": sub,
                            "record_id": _as_list(rkey),
                            "delivered_to": consumer,
                            "delivered_at_s": t_d / NS_PER_S,
                            "acked_at_s": ack_time / NS_PER_S if ack_time is not None else None,
                            "deadline_s": deadline / NS_PER_S,
                        },
                    )
        ca = certain_ack.get((sub, rkey))
        if ca is None:
            continue
        t_a, acker = ca
        died = consumer_end.get((sub, acker))
        if died is not None and died < t_a + grace:
            continue
        for t_d, consumer in ds:
            if t_d > t_a + grace:
                add_anomaly(
                    result,
                    "acked_redelivered",
                    {
                        "subscription": sub,
                        "record_id": _as_list(rkey),
                        "acked_by": acker,
                        "redelivered_to": consumer,
                        "after_ack_s": round((t_d - t_a) / NS_PER_S, 3),
                    },
                )
                break

    if skipped_timeout:
        result.notes.append(
            "ack timeout unknown for subscription(s) "
            f"{sorted(map(str, skipped_timeout))}: redelivery not judged "
            "(record it in the subscribe op or pass ack_timeout_s)"
        )
    for kind in ("undelivered", "not_redelivered", "acked_redelivered"):
        result.counts.setdefault(kind, 0)
        result.anomalies.setdefault(kind, [])
    result.counts.update(
        subscriptions=len(subs),
        records_delivered=len(deliveries),
        redeliveries=redeliveries,
        acked_records=len(first_ack),
    )
    result.figures["redelivery_delay_s"] = quantiles(delays)
    if result.counts["undelivered"] or result.counts["not_redelivered"]:
        result.valid = False
    elif result.counts["acked_redelivered"]:
        result.valid = False
    elif undelivered_soft:
        result.valid = "unknown"
    return result


def _as_list(rkey: Any) -> Any:
    if isinstance(rkey, tuple) and rkey and rkey[0] == "payload":
        return None
    return list(rkey) if isinstance(rkey, tuple) else rkey
