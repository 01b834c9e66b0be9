"""The collector's full passes skip what a process built while starting (``netsync.heap``).

Freezing changes the process it runs in for good, so it is tried in a process of its own: the
importer's modules loaded, as the daemon has them when it freezes.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys

from netsync.heap import counting_pauses

_PROBE = """
import gc, json, time
import importer.daemon.loop  # what the daemon has loaded when it freezes
from netsync.heap import freeze

def full_pass_walks():
    return len(gc.get_objects())  # the objects a full pass walks (the frozen are not among them)

before = full_pass_walks()
frozen = freeze()
again = freeze()  # a second call in the process changes nothing
kept = [{"n": i} for i in range(1000)]  # the work's own objects are still collected as before
cycle = []
cycle.append(cycle)
del cycle
print(json.dumps({"before": before, "after": full_pass_walks(), "frozen": frozen, "again": again,
                  "collected": gc.collect()}))
"""


def test_after_freezing_a_full_pass_walks_only_what_the_process_made_since() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], check=True, capture_output=True, text=True, timeout=60
    )
    seen = json.loads(out.stdout)
    assert seen["before"] > 50_000  # modules, pydantic and SQLAlchemy schemas
    assert seen["frozen"] >= seen["before"] * 0.9
    assert seen["again"] == seen["frozen"]
    assert seen["after"] < 5_000 + 1_000
    assert seen["collected"] >= 1  # a cycle made after the freeze is still freed


def test_pauses_are_counted_per_generation() -> None:
    with counting_pauses() as pauses:
        gc.collect()
        gc.collect(0)
    assert pauses.passes[2] >= 1
    assert pauses.passes[0] >= 1
    assert pauses.total > 0
    assert "collector pauses" in str(pauses)
    counted = dict(pauses.passes)
    gc.collect()
    assert pauses.passes == counted  # nothing counted once the block is over
