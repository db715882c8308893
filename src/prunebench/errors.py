"""Errors the CLI prints as one line and exits non-zero on, without a traceback: bad user
input (the message names the offending key or file and what is allowed), and an output that
does not fit on its disk or quota.
"""


class ConfigError(ValueError):
    """Bad user input: the message names the key/file and what is allowed."""


class DataError(ConfigError):
    """A data file is missing or corrupt."""


class StorageFullError(Exception):
    """An output could not be written because its file system (or the user's quota, or the
    file size limit) is full. The message names the file, the OS error and the free space;
    nothing half-written is left (prunebench.io.atomic_write). Not an OSError, so that no
    handler of ordinary I/O errors mistakes it for one."""
