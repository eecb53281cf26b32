"""The serving plane's one exception type: its message names the file, key or value that is wrong."""


class ServiceError(Exception):
    """A serving-plane operation that cannot be done as asked (bad state file, bad request, ...)."""
