"""User-facing errors: bad input that the user can fix, reported without a traceback."""

import re

# torch's DataLoader re-raises a worker's exception as ``type(exc)(text)`` with this text
# (torch.utils.data._utils... ExceptionWrapper.reraise): the worker's whole traceback.
_WORKER_WRAPPING = re.compile(r"Caught \w+ in DataLoader worker process \d+\.\nOriginal Traceback")


class RetinaFlowError(Exception):
    """Base class for errors whose message alone tells the user what to fix.

    Raised in a DataLoader worker, the error reaches the main process with the worker's traceback
    as its message; it keeps only the message it was raised with (the traceback's last entry).
    """

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str) and _WORKER_WRAPPING.match(args[0]):
            args = (_raised_message(args[0], type(self).__name__),)
        super().__init__(*args)


def _raised_message(traceback_text: str, class_name: str) -> str:
    """The message of the last ``<module>.<class_name>: message`` line group of a formatted traceback."""
    found = list(re.finditer(rf"^(?:[\w.]+\.)?{class_name}: ", traceback_text, re.MULTILINE))
    return traceback_text[found[-1].end():].rstrip("\n") if found else traceback_text


class ConfigError(RetinaFlowError):
    """An invalid configuration value, config file or command-line option."""


class DataError(RetinaFlowError):
    """A problem with the dataset on disk: names the file, row or value at fault."""


class WeightsUnavailableError(RetinaFlowError):
    """Pretrained weights are neither cached nor downloadable."""
