"""The entry points, each run as ``python -m pipeline.cli.<step>`` (MLproject runs them so).

An entry point's process ends through ``exit_with``: Python joins its threads and runs every exit
handler (MLflow's, logging's, temporary folders', child processes'), then the process ends without
the interpreter's teardown of each module and native library, which cost ~2 s of CPU per process
once torch, MLflow and scikit-learn are loaded (7.4 s against 5.4 s to import train and exit, here)
and changes nothing a user sees. ``main()`` called in another process (the tests) ends nothing.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from typing import NoReturn

_exit_code: list[int] = []  # set by exit_with: this process is an entry point that is done


def _end_without_teardown() -> None:
    if not _exit_code:
        return
    logging.shutdown()  # its own exit handler was registered before this one, so runs after it
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can reach it
            pass
    os._exit(_exit_code[0])


# Registered when the first entry point module is imported, before anything else registers one:
# exit handlers run last registered first, so this one runs after all the others.
atexit.register(_end_without_teardown)


def end_without_teardown(code: int) -> None:
    """From now on, this process ends with ``code`` once its threads are joined and its exit
    handlers have run, without the interpreter's teardown (the test workers' end, too)."""
    _exit_code.append(code)


def exit_with(code: int) -> NoReturn:
    """Ends an entry point's process with ``code`` (see the module's docstring)."""
    end_without_teardown(code)
    sys.exit(code)
