"""The control plane's one exception type (configuration errors are a kind of it)."""


class DaemonError(Exception):
    """Something the daemon cannot do; the message names the file, key or value at fault."""
