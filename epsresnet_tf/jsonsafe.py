"""Strict JSON for everything the run folder writes.

Python's `json` writes NaN and ±inf as the bare words `NaN` / `Infinity`, which are not JSON:
`jq`, JavaScript and most readers other than Python refuse the whole file. Here a
non-finite number becomes `null`, and an object that held one gets a sibling key
`"nonfinite"` listing the dotted paths that did, so the fact is kept, not hidden.

    json_safe(obj) -> (copy with non-finite floats as None, [dotted paths])
    dumps(obj, **json_kwargs) -> str      strict JSON (allow_nan=False) of json_safe(obj)
"""

from __future__ import annotations

import json
import math
from typing import Any

#: The key naming the non-finite entries of an object written by `dumps`.
NONFINITE = "nonfinite"


def _walk(obj: Any, path: str, bad: list[str]) -> Any:
    # numpy scalars are floats too (np.float64) or convert with float() (np.float32)
    if isinstance(obj, float) or type(obj).__name__ in ("float32", "float16"):
        value = float(obj)
        if math.isfinite(value):
            return value if not isinstance(obj, float) else obj
        bad.append(path)
        return None
    if isinstance(obj, dict):
        return {k: _walk(v, f"{path}.{k}" if path else str(k), bad) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_walk(v, f"{path}.{i}" if path else str(i), bad) for i, v in enumerate(obj)]
    return obj


def json_safe(obj: Any) -> tuple[Any, list[str]]:
    """A copy of `obj` with every non-finite float replaced by None, and the dotted paths
    (`"blocks.b1.discarded"`, `"lr_schedule.1.1"`) of those replaced, sorted."""
    bad: list[str] = []
    out = _walk(obj, "", bad)
    return out, sorted(bad)


def dumps(obj: Any, **kwargs: Any) -> str:
    """Strict JSON of `obj`: non-finite numbers as null; a dict that held any gets
    `"nonfinite": [paths]` (other values: the nulls alone)."""
    safe, bad = json_safe(obj)
    if bad and isinstance(safe, dict):
        safe[NONFINITE] = bad
    return json.dumps(safe, allow_nan=False, **kwargs)
