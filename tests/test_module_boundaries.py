"""Which module may lean on which: the command line stays light, training stays generic, the
engine is one package that installs without putting `data` or `train` on the import path."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRAINING_STACK = {"lth.train", "lth.steps", "lth.pruning", "lth.pretrain"}
COMMANDS = {"main.py", "sweep.py", "combine_plots.py", "instability.py"}
ROOT_MODULES = {"main", "sweep", "combine_plots", "instability", "utils"}
ENGINE = {path.stem for path in (ROOT / "lth").glob("*.py")} - {"__init__"}


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, by its full dotted name (`from lth import x` counts as lth.x)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            if node.module == "lth":
                names |= {f"lth.{alias.name}" for alias in node.names}
    return names


def python_files() -> list[Path]:
    return [p for p in ROOT.rglob("*.py") if not {".venv", "results"} & set(p.parts)]


def test_the_command_line_loads_no_training_code():
    probe = "import sys, lth.cli; print(' '.join(sorted(sys.modules)))"
    loaded = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert "lth.cli" in loaded
    assert TRAINING_STACK.isdisjoint(loaded), TRAINING_STACK & set(loaded)


def test_only_the_commands_import_the_cli_module():
    importers = {
        str(path.relative_to(ROOT))
        for path in python_files()
        if "lth.cli" in imported_modules(path) and path.parts[-2] != "tests"
    }
    assert importers == COMMANDS


def test_the_engine_modules_live_in_the_package_not_the_root():
    assert {"train", "data", "results", "pruning", "runs", "experiment"} <= ENGINE
    at_root = {path.stem for path in ROOT.glob("*.py")}
    assert at_root == ROOT_MODULES, at_root
    engine_only = ENGINE - ROOT_MODULES  # `instability` is a command and an engine module
    for path in python_files():
        bare = {name for name in imported_modules(path) if name.split(".")[0] in engine_only}
        assert not bare, (path, bare)  # every engine import is lth.<module>


def test_the_engine_does_not_import_the_root_modules():
    for path in (ROOT / "lth").glob("*.py"):
        root_modules = ROOT_MODULES & imported_modules(path)
        assert not root_modules, (path, root_modules)


def test_pip_installs_the_engine_and_archs_only(tmp_path):
    source, target = tmp_path / "source", tmp_path / "site"  # a copy: the build writes beside it
    shutil.copytree(
        ROOT, source, ignore=shutil.ignore_patterns(".*", "results", "build", "*.egg-info")
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
        + ["--target", str(target), str(source)],
        check=True,
        capture_output=True,
    )
    installed = {p.name for p in target.iterdir() if not p.name.endswith((".dist-info", ".pth"))}
    installed -= {"__pycache__", "bin"}
    assert installed == {"lth", "archs"}, installed
    assert (target / "lth" / "train.py").exists()
    assert (target / "archs" / "mnist").is_dir()


def test_pruning_takes_its_layer_types_from_layers_not_initialization():
    assert "lth.layers" in imported_modules(ROOT / "lth" / "pruning.py")
    assert "lth.initialization" not in imported_modules(ROOT / "lth" / "pruning.py")


def test_training_code_names_no_concrete_model_class():
    models = set()
    for path in (ROOT / "archs").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                models.add(node.name)
    assert {"FC1", "LeNet5", "FCLin"} & models, "the scan sees the architectures"
    for module in (
        "lth/train.py",
        "lth/steps.py",
        "lth/pruning.py",
        "lth/lottery.py",
        "main.py",
    ):
        source = (ROOT / module).read_text()
        named = {node.id for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Name)} | {
            node.attr for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Attribute)
        }
        assert named.isdisjoint(models), (module, named & models)


def test_no_command_or_script_imports_a_command():
    """What two commands share lives in lth/: a command, a script or the engine importing a
    command would run its module-level code and tie the commands together."""
    commands = {path.removesuffix(".py") for path in COMMANDS}
    for path in [*(ROOT / p for p in COMMANDS), *(ROOT / "scripts").glob("*.py")]:
        imported = commands & imported_modules(path)
        assert not imported, (path.name, imported)


def test_main_reads_like_the_original_main_in_at_most_100_lines():
    source = (ROOT / "main.py").read_text()
    assert len(source.splitlines()) <= 100
    tree = ast.parse(source)
    defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert {"main", "run"} <= defined
    run = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "run")
    calls = {
        node.func.attr
        for node in ast.walk(run)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    }
    assert {"prune", "train", "record", "commit"} <= calls  # the level loop, as the original's


STR_METHODS = {"startswith", "endswith", "removeprefix", "removesuffix"}


def literal_strings(node: ast.AST) -> list[str]:
    """The strings `node` is, or holds as a literal tuple, list or set, or as a dict's keys."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [s for element in node.elts for s in literal_strings(element)]
    if isinstance(node, ast.Dict):
        return [s for key in node.keys if key is not None for s in literal_strings(key)]
    return []


def leading_text(node: ast.AST) -> str:
    """The literal text a string or f-string starts with."""
    if isinstance(node, ast.JoinedStr) and node.values:
        node = node.values[0]
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else ""


def prune_type_comparisons(source: str, names: set[str]) -> list[tuple[int, str]]:
    """(line, name) wherever `source` tells prune methods apart by their names: a comparison
    (==, !=, in, not in, is) with a name or a literal collection of names, a dict literal keyed
    by one, a subscript or a match case by one, or a name (or `name_`) given to startswith,
    endswith, removeprefix or removesuffix; and a module's table of them: a name bound at the
    top of the module to a name, or to a literal collection of names only."""
    found = []
    tree = ast.parse(source)
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            texts = literal_strings(node.value)
            if texts and set(texts) <= names:
                found += [(node.lineno, text) for text in texts]
    for node in ast.walk(tree):
        texts: list[str] = []
        if isinstance(node, ast.Compare):
            texts = [
                s for operand in (node.left, *node.comparators) for s in literal_strings(operand)
            ]
        elif isinstance(node, ast.Dict):
            texts = literal_strings(node)
        elif isinstance(node, ast.Subscript):
            texts = literal_strings(node.slice)
        elif isinstance(node, ast.MatchValue):
            texts = literal_strings(node.value)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) in STR_METHODS:
            texts = [leading_text(arg).removesuffix("_") for arg in node.args]
        found += [(node.lineno, text) for text in texts if text in names]
    return sorted(set(found))


def test_the_scan_sees_every_way_of_telling_prune_types_apart():
    names = {"lt", "reinit"}
    code = (
        'a == "lt"\nb in ("x", "reinit")\nc = {"lt": 1}\nd["reinit"]\nname.startswith("lt_")\n'
        'name.removeprefix(f"lt_{x}")\nmatch t:\n    case "reinit":\n        pass\n'
        'f(prune_type="lt")\ng == "ltx"\nCONTROL = "reinit"\nKEPT = ("lt", "reinit")\n'
        'OTHER = ("lt", "x")\n'
    )
    found = sorted(line for line, _ in prune_type_comparisons(code, names))
    assert found == [1, 2, 3, 4, 5, 6, 8, 12, 13, 13]


def test_no_code_outside_the_registry_compares_prune_type_names():
    """Every decision that tells prune types apart is lth.methods': the rest asks it."""
    from lth import methods

    names = set(methods.names())
    code = [ROOT / name for name in sorted(COMMANDS)] + [ROOT / "utils.py"]
    code += sorted((ROOT / "lth").glob("*.py")) + sorted((ROOT / "scripts").glob("*.py"))
    code += sorted((ROOT / "archs").rglob("*.py"))
    found = {
        f"{path.relative_to(ROOT)}:{line}: {name}"
        for path in code
        if path != ROOT / "lth" / "methods.py"
        for line, name in prune_type_comparisons(path.read_text(), names)
    }
    assert not found, sorted(found)
