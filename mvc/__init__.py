"""mvc: content-addressed version control for model weights (public Python API).

`Repo` and the submodules load on first use, so that `mvc` (the command) can answer Ctrl-C
cleanly from its first moment and commands import only what they need.
"""
from .errors import (AbiMismatch, CheckFailed, CorruptObject, LockHeld, MvcError, NotARepository,
                     UnknownRevision)

__all__ = ["Repo", "MvcError", "CheckFailed", "NotARepository", "UnknownRevision", "CorruptObject",
           "LockHeld", "AbiMismatch"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "Repo":
        from .repo import Repo
        return Repo
    import importlib
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
