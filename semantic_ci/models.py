"""Building evaluable models from commits: the cores arch registry, or a user adapter
(`module:function` taking the loaded state dict and the component's tree) for other families."""
from __future__ import annotations

import importlib

from mvc.errors import BadInput, ConfigError


def import_adapter(spec: str):
    mod, _, fn = spec.partition(":")
    try:
        return getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"cannot import adapter {spec!r}: {e}") from None


def build_from_tree(tree: dict, state: dict, adapter: str | None = None):
    """An nn.Module-like callable (byte ids -> (B, T, 256) logits) for one component."""
    if adapter:
        model = import_adapter(adapter)(state, tree)
    else:
        arch, config = tree.get("arch"), tree.get("config")
        if not arch:
            raise BadInput("this component records no architecture",
                           "commit an nn.Module built by cores.build, or set ci.adapter = \"module:function\"")
        from cores import registry
        model = registry.build(arch, config)
        model.load_state_dict(state)
    if hasattr(model, "eval"):
        model.eval()
    return model


class ModelCache:
    """Models built once per (commit, component, bricks, adapter) within one CI run."""

    def __init__(self, repo):
        self.repo = repo
        self._models: dict = {}

    def get(self, commit: str, component: str = "core", bricks: tuple = (), adapter: str | None = None):
        key = (commit, component, tuple(bricks), adapter)
        if key not in self._models:
            tree = self.repo.tree(commit, component)
            model = build_from_tree(tree, self.repo.load(commit, component), adapter)
            for name in bricks:
                from bricks import attach_from_commit
                model = attach_from_commit(self.repo, commit, name, model)
            self._models[key] = model
        return self._models[key]

    def inputs(self, commit: str, component: str) -> dict:
        """What a certificate records of an evaluated component: commit and tree ids."""
        return {"commit": commit, "component": component,
                "tree": self.repo.read_commit(commit)["components"][component]}
