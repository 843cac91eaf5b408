"""Building evaluable models from commits: the cores arch registry, or a user adapter
(`module:function` taking the loaded state dict and the component's tree) for other families.

A user's adapter is outside mvc's control: whatever it (or the model it returns) raises is an
`AdapterFailed` (exit 3) naming the adapter, never an mvc bug (exit 4)."""
from __future__ import annotations

import importlib

from mvc.errors import BadInput, ConfigError, MvcError

ADAPTER_HINT = ("an adapter is function(state_dict, tree) -> model, the model mapping byte ids (B, T) "
                "to logits (B, T, 256); see semantic_ci/adapters.py")


class AdapterFailed(ConfigError):
    """A user adapter that cannot be imported, raised, or returned something that is no model."""


def import_adapter(spec: str):
    mod, _, fn = spec.partition(":")
    try:
        obj = getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise AdapterFailed(f"cannot import adapter {spec!r}: {e}",
                            "check the module is installed and the function name") from None
    except (Exception, SystemExit) as e:  # the module itself raised (or called sys.exit) while being imported
        raise AdapterFailed(f"cannot import adapter {spec!r}: {raised(e)}") from e
    if not callable(obj):
        raise AdapterFailed(f"adapter {spec!r} is a {type(obj).__name__}, not a function", ADAPTER_HINT)
    return obj


def raised(e: BaseException) -> str:
    """What user code raised, for a message: `sys.exit` named as such (its SystemExit, 0 included,
    passed through mvc ci and mvc run, which then ended with status 0 having measured nothing)."""
    if isinstance(e, SystemExit):
        return f"it called sys.exit({e.code!r})"
    return f"{type(e).__name__}: {e}"


def _failed(spec: str, e: BaseException) -> AdapterFailed:
    if isinstance(e, MvcError):
        return AdapterFailed(f"adapter {spec!r}: {e.message}", e.hint)
    return AdapterFailed(f"adapter {spec!r} failed: {raised(e)}", ADAPTER_HINT)


class AdapterModel:
    """A model an adapter returned: calls that raise, and outputs that are no (B, T, 256) float
    logits, become AdapterFailed. Attributes (state_dict, head, ...) pass through."""

    def __init__(self, spec: str, model):
        self.adapter_spec = spec
        self.model = model

    def __getattr__(self, name):
        if name in ("adapter_spec", "model"):  # not set yet (e.g. while unpickling)
            raise AttributeError(name)
        return getattr(self.model, name)

    def __call__(self, ids, *args, **kwargs):
        import torch
        try:
            out = self.model(ids, *args, **kwargs)
        except (Exception, SystemExit) as e:
            raise _failed(self.adapter_spec, e) from e
        logits = out[0] if isinstance(out, tuple) and out else out
        want = (*ids.shape, 256)
        if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != want \
                or not logits.is_floating_point():
            got = (f"a {logits.dtype} tensor of shape {tuple(logits.shape)}" if isinstance(logits, torch.Tensor)
                   else f"a {type(logits).__name__}")
            raise AdapterFailed(f"adapter {self.adapter_spec!r}: its model returned {got}, expected "
                                f"floating-point logits of shape {want}", ADAPTER_HINT)
        return out


def build_from_tree(tree: dict, state: dict, adapter: str | None = None):
    """An nn.Module-like callable (byte ids -> (B, T, 256) logits) for one component."""
    if adapter:
        fn = import_adapter(adapter)
        try:
            model = fn(state, tree)
            if callable(model) and hasattr(model, "eval"):
                model.eval()
        except (Exception, SystemExit) as e:
            raise _failed(adapter, e) from e
        if not callable(model):
            got = "None" if model is None else f"a {type(model).__name__}"
            raise AdapterFailed(f"adapter {adapter!r} returned {got}, not a model", ADAPTER_HINT)
        return AdapterModel(adapter, model)
    arch, config = tree.get("arch"), tree.get("config")
    if tree.get("kind") == "brick":  # it computes on its host's ABI states, not on bytes
        raise BadInput("this component is a brick, which runs inside a host",
                       "check the host with it attached: component = \"core\", bricks = [\"<name>\"] "
                       "; or use a migration check")
    if not arch:
        raise BadInput("this component records no architecture",
                       "commit an nn.Module built by cores.build, or set ci.adapter = \"module:function\"")
    from cores import registry

    from mvc.tensors import BUILD_ERRORS, match_stored_dtypes, precheck_build
    try:
        registry.builder(arch)
    except KeyError as e:
        raise BadInput(f"cannot build the component's recorded architecture: {e.args[0] if e.args else e}",
                       "install the package that provides it, or set ci.adapter = \"module:function\"") from None
    precheck_build(lambda: registry.build(arch, config), tree, f"the component (arch {arch!r})")
    try:
        model = registry.build(arch, config)
    except BUILD_ERRORS as e:
        raise BadInput(f"the component (arch {arch!r}) records a config it cannot build: {str(e)[:200]}",
                       "the commit is damaged or was made by other code") from None
    match_stored_dtypes(model, state)  # evaluated in the dtypes it was committed in, as repo.load_model builds it
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BadInput(f"the component's tensors do not fit its recorded architecture {arch!r}: {first}",
                       "the commit is damaged or was made by other code; set an adapter to evaluate it") from None
    model.eval()
    return model


class BrickDoesNotAttach(BadInput):
    """A brick (`bricks[index]` of a check) that does not attach to the model it is measured in: a
    brick made for another core, or a second brick (bricks do not stack)."""

    def __init__(self, message: str, index: int, hint: str | None = None):
        super().__init__(message, hint)
        self.index = index


def attach_stored_bricks(repo, commit: str, names, model):
    """`model` with the bricks `names` of `commit` attached, rebuilt as untrusted records are. One
    that does not fit is a BrickDoesNotAttach (exit 3), not bricks' ValueError (a crash, exit 4)."""
    import bricks
    for i, name in enumerate(names):
        comp = name if name.startswith("brick/") else f"brick/{name}"
        brick = rebuild_stored_brick(repo.tree(commit, comp), repo.load(commit, comp), comp)
        try:
            model = bricks.attach(model, brick)
        except ValueError as e:
            raise BrickDoesNotAttach(f"{comp} of {commit[:12]} does not attach: {str(e)[:300]}", i,
                                     "attach a brick to the core it was made for (bricks do not stack); "
                                     "a migration check measures one on other hosts") from None
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
            self._models[key] = attach_stored_bricks(self.repo, commit, bricks, model)
        return self._models[key]

    def inputs(self, commit: str, component: str) -> dict:
        """What a certificate records of an evaluated component: commit and tree ids."""
        return {"commit": commit, "component": component,
                "tree": self.repo.read_commit(commit)["components"][component]}


def rebuild_stored_brick(tree: dict, state: dict, component: str):
    """bricks.rebuild for a stored tree, whose arch and config are untrusted (BadInput, exit 3):
    a component that is not a brick, a config its arch cannot build or far larger than its tensors."""
    import bricks

    from mvc.tensors import BUILD_ERRORS, precheck_build
    arch, config = tree.get("arch"), tree.get("config")
    if arch not in bricks.BUILDERS or not isinstance(config, dict):
        raise BadInput(f"{component} is not a brick (its recorded arch is {str(arch)[:40]!r})",
                       "paste a component committed from a brick module")
    precheck_build(lambda: bricks.builder(arch)(config), tree, component)
    try:
        return bricks.rebuild(tree, state)
    except BUILD_ERRORS as e:
        raise BadInput(f"cannot rebuild {component}: {str(e)[:300]}",
                       "the commit is damaged or was made by other code") from None
