"""The sizes that say whether the code stays easy to change: the longest functions and widest
signatures of main.py and lth/, the lines of main.py, lth/ and the commands, and the modules
that open args.json.

    python scripts/code_metrics.py [ROOT]      # ROOT: a checkout (default: this one)
"""

import ast
import sys
from pathlib import Path

COMMANDS = ("main.py", "sweep.py", "combine_plots.py", "instability.py")


def functions(path: Path) -> list[tuple[str, int, int]]:
    """(qualified name, lines, parameters) of every function defined in `path`; `self` and
    `cls` are not counted as parameters."""
    found = []
    tree = ast.parse(path.read_text())

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                a = child.args
                names = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
                names += [x.arg for x in (a.vararg, a.kwarg) if x is not None]
                count = len([n for n in names if n not in ("self", "cls")])
                lines = child.end_lineno - child.lineno + 1
                found.append((f"{path.as_posix()}:{prefix}{child.name}", lines, count))
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")

    visit(tree, "")
    return found


def main(argv: list[str]) -> int:
    root = Path(argv[0]) if argv else Path(__file__).resolve().parent.parent
    engine = sorted((root / "lth").glob("*.py"))
    measured = [root / "main.py", *engine]
    every = [f for path in measured for f in functions(path)]
    every = [(name.removeprefix(root.as_posix() + "/"), n, p) for name, n, p in every]
    print("ten longest functions of main.py and lth/ (lines):")
    for name, lines, _ in sorted(every, key=lambda f: -f[1])[:10]:
        print(f"  {lines:4}  {name}")
    print("ten widest signatures (parameters):")
    for name, _, params in sorted(every, key=lambda f: -f[2])[:10]:
        print(f"  {params:4}  {name}")
    counted = [root / c for c in COMMANDS] + engine
    total = sum(len(p.read_text().splitlines()) for p in counted if p.exists())
    main_lines = len((root / "main.py").read_text().splitlines())
    print(f"lines: main.py {main_lines}; main.py, lth/ and the commands {total}")
    sources = [*(root / c for c in COMMANDS), *engine, *(root / "scripts").glob("*.py")]
    opening = sorted(
        p.relative_to(root).as_posix()
        for p in sources
        if p.exists() and p.name != "code_metrics.py" and '"args.json"' in p.read_text()
    )
    print(f"modules naming the file args.json ({len(opening)}): {', '.join(opening)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
