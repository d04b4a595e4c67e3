"""The entry points, each run as ``python -m pipeline.cli.<step>`` (MLproject runs them so).

An entry point's process ends through ``exit_with``: Python joins its threads and runs every exit
handler (MLflow's, logging's, temporary folders', child processes'), then the process ends without
the interpreter's teardown of each module and native library, which cost ~2 s of CPU per process
once torch, MLflow and scikit-learn are loaded (7.4 s against 5.4 s to import train and exit, here)
and changes nothing a user sees. ``main()`` called in another process (the tests) ends nothing.

An entry point's process also imports with Python's cycle collector off: it runs hundreds of times
while torch, MLflow, scikit-learn and matplotlib are imported and finds nothing to free (~1 s of
the ~5 s those imports take). ``imports_done`` turns it back on once the entry point has imported
what it runs with.
"""

from __future__ import annotations

import atexit
import gc
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

# This package is imported first by `python -m pipeline.cli.<step>`, while Python locates the module
# (sys.argv[0] is "-m" until then): only an entry point's own process starts with the collector off,
# not one that imports an entry point (the tests).
if sys.argv[:1] == ["-m"]:
    gc.disable()


def imports_done() -> None:
    """The entry point has imported what it runs with: the cycle collector back on, and what the
    imports made (which lives as long as the process) frozen out of its passes."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def end_without_teardown(code: int) -> None:
    """From now on, this process ends with ``code`` once its threads are joined and its exit
    handlers have run, without the interpreter's teardown (the test workers' end, too)."""
    _exit_code.append(code)


def exit_with(code: int) -> NoReturn:
    """Ends an entry point's process with ``code`` (see the module's docstring)."""
    end_without_teardown(code)
    sys.exit(code)
