"""ocap_cli: the ``ocap`` command, composed above the three packages. The algorithms package
(``ocap_core``) brings models, train, eval, import and prune, the control plane (``daemon``) brings
demo, the benchmarks (``bench``, in a source checkout) bring bench; none of them imports another's
commands, and ``ocap_core`` imports neither ``daemon`` nor ``bench``."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
