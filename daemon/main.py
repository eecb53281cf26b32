"""``ocapd``: the daemon's entry point. The daemon is not built yet; this says so and fails."""

import sys
from typing import Optional, Sequence

EXIT_CONFIG = 78


def main(argv: Optional[Sequence[str]] = None) -> int:
    print("ocapd: the ocap daemon is not part of this version yet", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
