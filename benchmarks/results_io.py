"""The one place benchmarks write their JSON reports (by default under benchmarks/results/, gitignored)."""
from __future__ import annotations

import json
import os


def write_report(report: dict, out: str, **dump_kw) -> str:
    """Write `report` as indented JSON to `out` (creating its folder); returns `out`."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(report, f, indent=2, **dump_kw)
        f.write("\n")
    return out
