"""Short listings for error messages and logs."""
from typing import Iterable, Optional


def name_list(items: Iterable, limit: Optional[int] = 12) -> str:
    """``'a, b, c, ... (N more)'``: the first ``limit`` items (all with None)."""
    items = [str(item) for item in items]
    if limit is None or len(items) <= limit:
        return ', '.join(items)
    return ', '.join(items[:limit]) + f', ... ({len(items) - limit} more)'
