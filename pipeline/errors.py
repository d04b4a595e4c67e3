"""User-facing errors: bad input that the user can fix, reported without a traceback."""


class RetinaFlowError(Exception):
    """Base class for errors whose message alone tells the user what to fix."""


class ConfigError(RetinaFlowError):
    """An invalid configuration value, config file or command-line option."""


class DataError(RetinaFlowError):
    """A problem with the dataset on disk: names the file, row or value at fault."""


class WeightsUnavailableError(RetinaFlowError):
    """Pretrained weights are neither cached nor downloadable."""
