"""``ocapctl``: the control-socket client. The socket server it talks to is not built yet."""

import sys
from typing import Optional, Sequence

EXIT_UNREACHABLE = 3


def main(argv: Optional[Sequence[str]] = None) -> int:
    print("ocapctl: the ocap daemon and its control socket are not part of this version yet", file=sys.stderr)
    return EXIT_UNREACHABLE


if __name__ == "__main__":
    sys.exit(main())
