"""JSON as RFC 8259 has it: no NaN or Infinity, which Python's ``json`` writes by default and strict
parsers (browsers, jq, Go, Rust) refuse. A non-finite float is a value that is missing (the loss of an
epoch that diverged, an agreement with nothing to measure), so it is written as null. Standard library
only: the serving and control planes use it too."""

import json
import math
from typing import IO, Any


def finite(obj: Any) -> Any:
    """``obj`` with every non-finite float (also in nested dicts, lists and tuples) replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` that writes non-finite floats as null and refuses any that are left (``default``)."""
    return json.dumps(finite(obj), allow_nan=False, **kwargs)


def dump(obj: Any, f: IO[str], **kwargs: Any) -> None:
    f.write(dumps(obj, **kwargs))
