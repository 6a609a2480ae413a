"""Which module may lean on which: the command line stays light, training stays generic."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRAINING_STACK = {"train", "steps", "pruning", "pretrain"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_command_line_loads_no_training_code():
    probe = "import sys, cli; print(' '.join(sorted(sys.modules)))"
    loaded = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert "cli" in loaded
    assert TRAINING_STACK.isdisjoint(loaded)


def test_pruning_takes_its_layer_types_from_layers_not_initialization():
    assert "layers" in imported_modules(ROOT / "pruning.py")
    assert "initialization" not in imported_modules(ROOT / "pruning.py")


def test_training_code_names_no_concrete_model_class():
    models = set()
    for path in (ROOT / "archs").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                models.add(node.name)
    assert {"FC1", "LeNet5", "FCLin"} & models, "the scan sees the architectures"
    for module in ("train.py", "steps.py", "pruning.py", "main.py"):
        source = (ROOT / module).read_text()
        named = {node.id for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Name)} | {
            node.attr for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Attribute)
        }
        assert named.isdisjoint(models), (module, named & models)
