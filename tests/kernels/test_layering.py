"""Layering of layer 0 and layer 1: kernels/ imports only torch, numpy and the stdlib; cores/ may add
kernels (and its declared dependencies), never mvc, bricks, semantic_ci or examples."""
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN_EVERYWHERE = {"mvc", "bricks", "semantic_ci", "examples"}
KERNELS_ALLOWED = {"torch", "numpy", "kernels"}
CORES_ALLOWED = KERNELS_ALLOWED | {"cores", "blake3", "tokenizers", "rich"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _third_party(names: set[str]) -> set[str]:
    return {n for n in names if n not in sys.stdlib_module_names}


def test_kernels_import_only_torch_numpy_stdlib():
    for path in sorted((ROOT / "kernels").glob("*.py")):
        bad = _third_party(_imports(path)) - KERNELS_ALLOWED
        assert not bad, f"{path.name} imports {sorted(bad)}"


def test_cores_never_import_upper_layers():
    for path in sorted((ROOT / "cores").glob("*.py")):
        names = _imports(path)
        assert not names & FORBIDDEN_EVERYWHERE, f"{path.name} imports {sorted(names & FORBIDDEN_EVERYWHERE)}"
        bad = _third_party(names) - CORES_ALLOWED
        assert not bad, f"{path.name} imports {sorted(bad)}"
