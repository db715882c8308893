"""Errors for bad user input.

Every message names the offending key or file and what is allowed, so the CLI can print it
on one line and exit non-zero without a traceback.
"""


class ConfigError(ValueError):
    """Bad user input: the message names the key/file and what is allowed."""


class DataError(ConfigError):
    """A data file is missing or corrupt."""
