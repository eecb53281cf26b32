"""``python -m ocap_core``: the algorithms package's commands alone (models, train, eval, import, prune);
``ocap`` (``python -m ocap_cli``) has every command, demo and bench included."""

import sys

from .cli import main

sys.exit(main())
