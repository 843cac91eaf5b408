"""DESIGN.md section 2: the import directions between packages and inside mvc are enforced here."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ["kernels", "cores", "bricks", "semantic_ci", "mvc"]
# package -> packages it must never import (anywhere in its modules)
FORBIDDEN = {
    "kernels": {"cores", "bricks", "semantic_ci", "mvc"},
    "cores": {"bricks", "semantic_ci", "mvc"},
    "bricks": {"semantic_ci", "mvc"},
    "semantic_ci": set(),
}
MVC_STORAGE_FORBIDDEN = {"cores", "bricks", "kernels", "semantic_ci"}
# modules of mvc that may import torch only lazily (inside functions), never at module level
NO_TOP_LEVEL_TORCH = True


def _imports(path: pathlib.Path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node, a.name.split(".")[0], 0
        elif isinstance(node, ast.ImportFrom):
            yield node, (node.module or "").split(".")[0], node.level


def _top_level_imports(path: pathlib.Path):
    tree = ast.parse(path.read_text(), str(path))
    for node in tree.body:
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield (node.module or "").split(".")[0]


def _modules(pkg):
    return sorted((ROOT / pkg).rglob("*.py"))


def test_packages_respect_layering():
    bad = []
    for pkg, forbidden in FORBIDDEN.items():
        for path in _modules(pkg):
            for _node, top, level in _imports(path):
                if level == 0 and top in forbidden:
                    bad.append(f"{path.relative_to(ROOT)} imports {top}")
    assert not bad, bad


def test_mvc_storage_layer_never_imports_model_code():
    bad = []
    for path in _modules("mvc"):
        if "cli" in path.relative_to(ROOT / "mvc").parts:
            continue
        for _node, top, level in _imports(path):
            if level == 0 and top in MVC_STORAGE_FORBIDDEN:
                bad.append(f"{path.relative_to(ROOT)} imports {top}")
    assert not bad, bad


def test_mvc_imports_torch_only_lazily():
    bad = [str(p.relative_to(ROOT)) for p in _modules("mvc") if "torch" in set(_top_level_imports(p))]
    assert not bad, f"modules importing torch at module level: {bad}"


def test_mvc_internal_direction():
    """errors <- objects <- {store, refs, tensors, components} <- repo <- cli.

    Every module of mvc must have a rank here (a new module is placed on purpose), and
    `from . import x` counts as an import of x."""
    rank = {"errors": 0, "transfer": 0, "quoting": 0, "interrupts": 0, "forks": 0, "config": 1, "objects": 1, "safetensors_format": 1, "pack_format": 1,
            "pack_codec": 1, "store": 2, "files": 2, "output_folders": 2, "tensors": 2, "pack": 2, "refs": 3, "components": 3,
            "idlines": 3, "listing_cache": 3, "provenance": 3, "diffs": 4, "maintenance": 4, "certindex": 4, "transport": 4, "transport_s3": 4, "pack_write": 4, "repo": 5,
            "paste": 5, "remote": 6, "cli": 9, "__init__": 9, "__main__": 9}
    bad = []
    for path in _modules("mvc"):
        rel = path.relative_to(ROOT / "mvc")
        me = rel.parts[0].removesuffix(".py")
        if me not in rank:
            bad.append(f"mvc/{rel} has no rank in this test")
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not (isinstance(node, ast.ImportFrom) and node.level >= 1):
                continue
            if len(rel.parts) > 1 and node.level == 1:
                continue  # inside a subpackage (cli, remote)
            targets = [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
            bad += [f"mvc/{rel} imports {t}" for t in targets if t in rank and rank[t] > rank[me]]
    assert not bad, bad


def test_every_module_has_a_docstring():
    missing = []
    for pkg in PACKAGES + ["examples", "benchmarks"]:
        for path in _modules(pkg) if (ROOT / pkg).exists() else []:
            tree = ast.parse(path.read_text())
            if not ast.get_docstring(tree):
                missing.append(str(path.relative_to(ROOT)))
    assert not missing, missing
