"""The one exception type of ocap_core: every expected failure (bad data, bad package, bad options)."""


class OcapError(Exception):
    """A failure the user can act on; the message names the file, key or value that is wrong."""
