"""Print the lowest versions pyproject.toml declares, as pins (``name==version``), for a CI stage.

    python scripts/lowest_deps.py eval viewer export ros rerun gtsam   ->  evo==1.26.0 ...

Arguments name optional extras (``[project.optional-dependencies]``) or core dependencies by
package name (``gtsam``). Each requirement's lower bound (``>=X``) becomes ``==X``; markers and
upper bounds are kept as they are in the file, so that a bound the file caps (``numpy<2``) stays.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

try:
    import tomllib
except ImportError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[1]


def pins(names: list[str]) -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project.get("optional-dependencies", {})
    core = {re.split(r"[<>=!~ ;\[]", r, maxsplit=1)[0].lower(): r for r in project.get("dependencies", [])}
    out = []
    for name in names:
        reqs = extras.get(name) or ([core[name.lower()]] if name.lower() in core else None)
        if reqs is None:
            raise SystemExit(f"lowest_deps: '{name}' is neither an extra nor a core dependency of pyproject.toml")
        for req in reqs:
            if req.startswith("slam3r"):
                continue
            m = re.match(r"^([A-Za-z0-9_.\-\[\]]+)\s*>=\s*([0-9][^,;\s]*)(.*)$", req)
            if not m:
                raise SystemExit(f"lowest_deps: {req!r} declares no lower bound (>=)")
            pkg, low, rest = m.groups()
            out.append(f"{pkg}=={low}{rest.replace(' ', '') and ' ' + rest.strip().lstrip(',')}".strip())
    return out


if __name__ == "__main__":
    print("\n".join(pins(sys.argv[1:] or ["eval", "viewer", "export", "ros"])))
