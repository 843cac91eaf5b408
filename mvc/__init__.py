"""mvc: content-addressed version control for model weights (public Python API).

`Repo` and the submodules load on first use, so that `mvc` (the command) can answer Ctrl-C
cleanly from its first moment and commands import only what they need.
"""
__all__ = ["Repo", "MvcError", "OnCommitCi", "CheckFailed", "CiDidNotRun", "NotARepository", "UnknownRevision",
           "CorruptObject", "LockHeld", "AbiMismatch"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "Repo":
        from .repo import Repo
        return Repo
    if name[:1].isupper():  # an error class (mvc.errors: loaded on first use too)
        from . import errors
        found = getattr(errors, name, None)
        if isinstance(found, type) and issubclass(found, BaseException):
            return found
    import importlib
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__() -> list[str]:
    from . import errors
    return sorted({*globals(), *__all__, *(n for n, v in vars(errors).items()
                                           if isinstance(v, type) and issubclass(v, BaseException))})
