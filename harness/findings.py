"""Findings: where a target knowingly departs from the protocol, reported as that target's.

A check asserts what the protocol promises. Where the target under test departs from it in
a way its settings document (`TargetSettings.deviates(id)`, with the HStreamDB source that
shows it in `deviations[id]`), the check does not fail — the harness is right and the
server is known to differ — and does not pass either — the protocol was not met. It ends
with `target_finding(settings, id, observed)`: pytest's xfail outcome carrying
"<target label>: <finding text> (HStreamDB <source>)", which the report shows as a
known-deviation cell, the way the official clients' deviations are shown
(`suites/clients/findings.py`).

The outcome is strict in the same sense as those clients' strict xfails: an observation
that meets the protocol on a target documenting the departure fails (the target changed;
its settings must follow), and one that matches neither the protocol nor the documented
departure fails naming both (`judge`). A check with several observations collects them in
`Findings` and reports once it has checked everything else, so a finding never hides a
later failure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import NoReturn, Protocol

import pytest


class Target(Protocol):
    """What a finding needs of `harness.targets.settings.TargetSettings`."""

    @property
    def label(self) -> str: ...

    @property
    def deviations(self) -> Mapping[str, str]: ...

    def deviates(self, finding: str) -> bool: ...


@dataclass(frozen=True)
class Finding:
    id: str
    # What the target does instead of what the protocol promises, in a report's words.
    text: str
    # The observation that shows it, short, for a failure that names both.
    departure: str


_FINDINGS = [
    # --- gossip and membership (checked by the membership suites) ------------------------
    Finding(
        "confirm_after_probe",
        "the prober confirms a suspect dead itself once one probe interval passes "
        "without an ack; there is no suspicion timeout",
        "Confirm after one probe interval",
    ),
    Finding(
        "retransmit_ln",
        "an update is retransmitted at most 4*ceil(ln(n+2)) times, n = the other alive "
        "members (not mult*ceil(log10(n+1)))",
        "4*ceil(ln(n+2)) retransmissions",
    ),
    Finding(
        "alive_only_lists",
        "member lists hold alive members only: a suspect vanishes from DescribeCluster "
        "and is never reported Unavailable",
        "suspects missing from the member list",
    ),
    Finding(
        "no_cli_service",
        "the gossip service registers only the Send* methods: CliCluster and the other "
        "Cli* calls answer UNIMPLEMENTED",
        "UNIMPLEMENTED for CliCluster",
    ),
    Finding(
        "refuse_alive_rejoin",
        "a node restarted before its peers confirmed its old incarnation dead is refused "
        "with DuplicateNodeId and exits",
        "DuplicateNodeId on rejoin",
    ),
    Finding(
        "reconnect_one_random",
        "members confirmed dead are retried one at a time, a random one every 30 s, and "
        "only by a node whose alive list is at least as long as its dead list: after a "
        "partition heals, the minority waits for the majority to re-admit it",
        "one reconnect per 30 s",
    ),
    Finding(
        "ready_line_before_join",
        "the ready line is printed before gossip has joined; a refused join then ends the "
        "process after it",
        "exit after the ready line",
    ),
    Finding(
        "status_self_running",
        "`server status` always shows the asking node Running, ready or not",
        "the asking node Running before the cluster is ready",
    ),
    # --- client API (checked by suites/api) -----------------------------------------------
    Finding(
        "auth_cancels",
        "without TLS a refused call (no token, a wrong one, another scheme) is CANCELLED, "
        "not UNAUTHENTICATED: the auth interceptor cancels it",
        "CANCELLED",
    ),
    Finding(
        "tokens_verbatim",
        'the authorization header is compared byte for byte with "Basic " + a configured '
        "token (no decoding, no case folding)",
        'a refusal of anything but "Basic <token>" verbatim',
    ),
    Finding(
        "admin_parse_error_internal",
        "an admin command that does not parse fails INTERNAL (an ioError) with a "
        'plain-text message, not an "error" result or INVALID_ARGUMENT',
        "INTERNAL",
    ),
    Finding(
        "unicode_names",
        "names take Unicode letters (isLetter first, then isAlphaNum, '-' or '_')",
        "a non-ASCII letter or digit accepted",
    ),
    Finding(
        "unacked_checked_per_read",
        "maxUnackedRecords is checked once before each read and a read sends up to 100 "
        "batches, so a consumer may hold up to 100 batches past the limit",
        "up to 100 batches past maxUnackedRecords",
    ),
    Finding(
        "inflight_waits_for_deadline",
        "a departed consumer's in-flight records are resent at their ack deadline, not "
        "when its shards move",
        "in-flight records back only at their ack deadline",
    ),
]

FINDINGS: dict[str, Finding] = {finding.id: finding for finding in _FINDINGS}
assert len(FINDINGS) == len(_FINDINGS), "duplicate finding ids"


def lookup(finding_id: str) -> Finding:
    try:
        return FINDINGS[finding_id]
    except KeyError:
        raise KeyError(
            f"finding {finding_id!r} is not in harness/findings.py; known: "
            f"{', '.join(sorted(FINDINGS))}"
        ) from None


def finding_text(settings: Target, finding_id: str) -> str:
    """How reports name a finding: `<target label>: <finding text> (HStreamDB <source>)`."""
    finding = lookup(finding_id)
    source = settings.deviations.get(finding_id, "source not documented")
    return f"{settings.label}: {finding.text} (HStreamDB {source})"


def _xfail(settings: Target, seen: Mapping[str, list[str]]) -> NoReturn:
    # "known deviation": the report tells findings from skips by it (and by allure's XFAIL).
    parts = []
    for finding_id, observed in seen.items():
        distinct = list(dict.fromkeys(observed))
        shown = "; ".join(distinct[:3]) + (f"; {len(distinct) - 3} more" if distinct[3:] else "")
        parts.append(f"{finding_text(settings, finding_id)} [{finding_id}; observed: {shown}]")
    pytest.xfail("known deviation: " + " | ".join(parts))
    raise AssertionError("unreachable: pytest.xfail raises")  # for type checkers without pytest


def target_finding(settings: Target, finding_id: str, observed: str) -> NoReturn:
    """End the check with the finding `finding_id` of this target (strict-xfail-like).

    Only a departure the target documents is a finding; any other is a failure, raised as
    AssertionError naming the observation and the finding the target would need.
    """
    finding = lookup(finding_id)
    if not settings.deviates(finding_id):
        raise AssertionError(
            f"{observed}: that is {finding.departure} ({finding.text}), a departure "
            f"{settings.label} does not document"
        )
    _xfail(settings, {finding_id: [observed]})


def _verdict(
    settings: Target,
    finding_id: str,
    observed: str,
    conforms: bool,
    departs: bool,
    protocol: str,
) -> bool:
    """True when the observation is the departure this target documents, False when it
    meets the protocol; any other case raises AssertionError naming both."""
    finding = lookup(finding_id)
    documented = settings.deviates(finding_id)
    if conforms and not documented:
        return False
    if conforms:
        raise AssertionError(
            f"{observed}: meets the protocol ({protocol}), but {settings.label} documents "
            f"the departure {finding_id!r} ({finding.departure}); if the target changed, "
            "its settings must follow"
        )
    if departs and documented:
        return True
    if departs:
        raise AssertionError(
            f"{observed}: want {protocol} (protocol); this is {finding.departure}, the "
            f"departure {finding_id!r}, which {settings.label} does not document"
        )
    raise AssertionError(
        f"{observed}: want {protocol} (protocol)"
        + (
            f" or {finding.departure} (the departure {settings.label} documents, {finding_id!r})"
            if documented
            else ""
        )
    )


def judge(
    settings: Target,
    finding_id: str,
    observed: str,
    *,
    conforms: bool,
    departs: bool,
    protocol: str,
) -> None:
    """Return when `observed` meets the protocol; a finding when it is the departure this
    target documents; otherwise fail, naming the protocol's expectation and the departure."""
    if _verdict(settings, finding_id, observed, conforms, departs, protocol):
        target_finding(settings, finding_id, observed)


class Findings:
    """The departures one check observed, reported together once it checked the rest."""

    def __init__(self, settings: Target) -> None:
        self.settings = settings
        self.seen: dict[str, list[str]] = {}

    def judge(
        self, finding_id: str, observed: str, *, conforms: bool, departs: bool, protocol: str
    ) -> None:
        """Like `judge`, but a documented departure is recorded and the check goes on."""
        if _verdict(self.settings, finding_id, observed, conforms, departs, protocol):
            self.seen.setdefault(finding_id, []).append(observed)

    def report(self) -> None:
        """At the end of the check: the recorded findings, if any, as its outcome."""
        if self.seen:
            _xfail(self.settings, self.seen)
