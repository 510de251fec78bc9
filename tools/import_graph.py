"""Write the import graph of slam3r's packages as text (module edges, package edges, cycles).

    pip install grimp            # a tool of this script only, not a dependency of slam3r
    python tools/import_graph.py docs/import_graph.txt

Edges include imports under ``if TYPE_CHECKING:`` (grimp's default): a cycle through them is
still a cycle in what a reader has to hold in mind.
"""
from __future__ import annotations

import sys

PACKAGES = ("stream3r", "slam3r_app", "slam3r_plugins", "slam3r_datasets")


def unit(module: str) -> str:
    """``slam3r_plugins.fusion.tsdf`` -> ``slam3r_plugins.fusion``; a core module stays whole."""
    parts = module.split(".")
    return ".".join(parts[:2])


def main(out: str) -> None:
    try:
        import grimp
    except ImportError:
        sys.exit("tools/import_graph.py needs grimp: pip install grimp")
    g = grimp.build_graph(*PACKAGES, include_external_packages=False)
    mods = sorted(m for m in g.modules if m.split(".")[0] in PACKAGES)
    ours = set(mods)
    lines = [f"# modules: {len(mods)}"]
    edges = 0
    for m in mods:
        imps = sorted(i for i in g.find_modules_directly_imported_by(m) if i in ours)
        edges += len(imps)
        if imps:
            lines.append(f"{m} -> {', '.join(imps)}")
    lines.append(f"# module edges: {edges}")

    lines.append("# top-level package -> top-level package (number of module imports)")
    count: dict[tuple[str, str], int] = {}
    for m in mods:
        for i in g.find_modules_directly_imported_by(m):
            if i in ours and m.split(".")[0] != i.split(".")[0]:
                key = (m.split(".")[0], i.split(".")[0])
                count[key] = count.get(key, 0) + 1
    lines += [f"{a} -> {b}: {n}" for (a, b), n in sorted(count.items())]

    lines.append("# between plugins: slam3r_plugins.X -> slam3r_plugins.Y (X != Y)")
    pairs = sorted({(unit(m), unit(i)) for m in mods if m.startswith("slam3r_plugins.")
                    for i in g.find_modules_directly_imported_by(m)
                    if i.startswith("slam3r_plugins.") and unit(m) != unit(i)})
    lines += [f"{a} -> {b}" for a, b in pairs] or ["(none)"]

    lines.append("# slam3r_plugins -> slam3r_datasets")
    reach = sorted(f"{m} -> {i}" for m in mods if m.startswith("slam3r_plugins")
                   for i in g.find_modules_directly_imported_by(m) if i.startswith("slam3r_datasets"))
    lines += reach or ["(none)"]

    lines.append("# import cycles (a module that imports one which, directly or not, imports it back)")
    cycles = sorted(f"{a} -> {b} -> ... -> {a}" for a in mods for b in g.find_modules_directly_imported_by(a)
                    if b in ours and g.chain_exists(importer=b, imported=a))
    lines += cycles or ["(none)"]
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines[lines.index("# top-level package -> top-level package (number of module imports)"):]))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "import_graph.txt")
