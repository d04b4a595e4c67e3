"""Racing threads: calls that users sharing a server make at the same moment."""

from __future__ import annotations

import threading
from collections.abc import Callable

RACERS = 8
ROUNDS = 3


def run_at_once(task: Callable[[threading.Barrier], None]) -> list[str]:
    """Runs ``task`` in RACERS threads that pass the barrier together; returns their errors."""
    start_together = threading.Barrier(RACERS)
    errors: list[str] = []

    def racer() -> None:
        try:
            task(start_together)
        except BaseException as exc:  # noqa: BLE001 - the test reports every racer's failure
            errors.append(str(exc)[:300])

    threads = [threading.Thread(target=racer) for _ in range(RACERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return errors
