"""mvc: content-addressed version control for model weights (public Python API)."""
from .errors import (AbiMismatch, CheckFailed, CorruptObject, LockHeld, MvcError, NotARepository,
                     UnknownRevision)
from .repo import Repo

__all__ = ["Repo", "MvcError", "CheckFailed", "NotARepository", "UnknownRevision", "CorruptObject",
           "LockHeld", "AbiMismatch"]
__version__ = "0.1.0"
