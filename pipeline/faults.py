"""Fault injection for the crash tests, and nothing else: inert unless the test sets the variable.

``RETINA_FLOW_KILL_AT_BATCH=N`` makes the training process SIGKILL itself after its N-th training
batch, the way an out-of-memory killer or a pre-empted machine would stop it.
"""

from __future__ import annotations

import itertools
import os
import signal
from collections.abc import Callable

KILL_AT_BATCH_ENV = "RETINA_FLOW_KILL_AT_BATCH"


def batch_hook_from_env() -> Callable[[], None] | None:
    """The per-batch hook the crash tests ask for, or None (always, outside those tests)."""
    kill_at = os.environ.get(KILL_AT_BATCH_ENV)
    if not kill_at:
        return None
    counter = itertools.count(1)

    def maybe_die() -> None:
        if next(counter) == int(kill_at):
            os.kill(os.getpid(), signal.SIGKILL)

    return maybe_die
