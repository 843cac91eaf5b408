"""Exception types of mvc; each carries the CLI exit code and an optional hint for the user."""


class MvcError(Exception):
    """An mvc error the user can act on (CLI exit code 3)."""

    exit_code = 3

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class NotARepository(MvcError):
    pass


class UnknownRevision(MvcError):
    pass


class AmbiguousRevision(UnknownRevision):
    pass


class ObjectMissing(MvcError):
    pass


class CorruptObject(MvcError):
    pass


class WrongObjectType(CorruptObject):
    """A well-formed object of another kind than asked for (e.g. a tree id given as a commit)."""

    def __init__(self, message: str, got: str):
        super().__init__(message)
        self.got = got


class LockHeld(MvcError):
    pass


class RefConflict(MvcError):
    """A compare-and-swap ref update found another value than expected."""


class BadInput(MvcError):
    """A malformed or unsafe input file (safetensors, pickle, path, value)."""


class BadName(BadInput):
    pass


class FormatTooNew(MvcError):
    pass


class AbiMismatch(MvcError):
    pass


class NonFastForward(MvcError):
    pass


class ConfigError(MvcError):
    pass


class CheckFailed(MvcError):
    """A semantic-CI gate failed on a commit (raised by repo.commit with on_fail = "rollback")."""

    exit_code = 1

    def __init__(self, commit: str, certificate: str | None, message: str | None = None):
        super().__init__(message or f"semantic CI failed on commit {commit[:12]}")
        self.commit = commit
        self.certificate = certificate


class InterruptedAfterLanding(KeyboardInterrupt):
    """Ctrl-C arrived after a commit had landed (its ref moved): the work is done and must not be
    redone, so the message names what landed."""

    def __init__(self, landed: str):
        super().__init__(landed)
        self.landed = landed
