"""mvc: content-addressed version control for model weights (public Python API).

`Repo` and the submodules load on first use, so that `mvc` (the command) can answer Ctrl-C
cleanly from its first moment and commands import only what they need.
"""
__all__ = ["Repo", "MvcError", "CheckFailed", "NotARepository", "UnknownRevision", "CorruptObject",
           "LockHeld", "AbiMismatch"]
__version__ = "0.1.0"


_ERRORS = {"MvcError", "CheckFailed", "NotARepository", "UnknownRevision", "CorruptObject", "LockHeld",
           "AbiMismatch", "ObjectMissing", "BadInput", "ConfigError"}  # (mvc.errors: loaded on first use too)


def __getattr__(name: str):
    if name == "Repo":
        from .repo import Repo
        return Repo
    if name in _ERRORS:
        from . import errors
        return getattr(errors, name)
    import importlib
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
