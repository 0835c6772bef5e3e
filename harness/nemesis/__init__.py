"""The nemesis: every fault a suite injects, as data, applied by small composable families
and recorded in the history (Jepsen's nemesis, generator and compose).

* `faults`: `Fault`, `FaultInstance`, the `FAULTS` catalogue, `PACKAGES`, `parse_faults`;
* `base`: the family protocol (`setup` / `invoke` / `teardown`, `needs`, `kinds`) and
  `compose`;
* one module per family: `process` (kill, restart, pause), `store`, `partition`, `toxic`,
  `join`, `crash` (a process of this machine: a client driver, a connector program),
  `clock` (a node's realtime clock, through the clock layer of harness.clocklayer);
  `disk` (the store's disk, through the lazy disk of harness.lazydisk);
  `stress` (a node short of CPU or memory: stress-ng next to it, cgroup CPU throttling);
  `membership_changes` (a graceful leave, a rolling restart of every node);
* `recording`: `Nemesis(cluster, history)`, the families composed, every action recorded;
* `generator`: `Schedule`, the one type for what happens when, its producers and `play`;
* `audit`: whether every fault asked for is in the history (suites/conftest.py uses it).
"""

from harness.nemesis.base import Context, Family, NemesisError, TeardownError, compose
from harness.nemesis.faults import (
    FAULTS,
    KINDS,
    LINKS,
    PACKAGES,
    TARGETS,
    TOXICS,
    Fault,
    FaultInstance,
    parse_faults,
)
from harness.nemesis.generator import (
    Schedule,
    Step,
    always_heal_last,
    each_fault_once,
    generate_schedule,
    play,
    program_strategy,
    schedule_strategy,
)
from harness.nemesis.recording import Nemesis, default_families

__all__ = [
    "FAULTS",
    "KINDS",
    "LINKS",
    "PACKAGES",
    "TARGETS",
    "TOXICS",
    "Context",
    "Family",
    "Fault",
    "FaultInstance",
    "Nemesis",
    "NemesisError",
    "Schedule",
    "Step",
    "TeardownError",
    "always_heal_last",
    "compose",
    "default_families",
    "each_fault_once",
    "generate_schedule",
    "parse_faults",
    "play",
    "program_strategy",
    "schedule_strategy",
]
