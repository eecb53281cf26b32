"""ocap_core: the algorithms. Importing it never loads torch; torch modules are imported explicitly
(``ocap_core.zoo``, ``ocap_core.export``, ``ocap_core.train``, ...)."""

from .errors import OcapError

__version__ = "0.1.0"
__all__ = ["OcapError", "__version__"]
