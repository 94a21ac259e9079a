"""The problems a user can fix. Each is reported as one line and an exit status, never a traceback (lenet.cli)."""

from hydra.errors import CompactHydraException


class UserError(Exception):
    """A problem the user can fix (a bad value, missing files): reported as one line, no traceback."""

    exit_status = 1


class ConfigError(UserError):
    """A config value that cannot work."""


class DataError(UserError):
    """The data cannot be found, downloaded or read."""


class ModelError(UserError):
    """A model file that cannot be used."""


class SweepError(CompactHydraException):
    """Ends a sweep's job with one line: Hydra prints this kind of exception without a traceback."""
