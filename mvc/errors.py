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


class TooLarge(CorruptObject):
    """A remote object or file larger than its reader expects (refused before it is read)."""


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


class ChangedWhileStored(BadInput):
    """Bytes being stored changed before they were all written (another thread writing a tensor
    that is being committed, another program writing a file being committed): nothing is stored."""


class CredentialsRefused(MvcError):
    """A remote refused the credentials a request was signed with (expired, rotated or denied)."""


class FormatTooNew(MvcError):
    pass


class AbiMismatch(MvcError):
    pass


class NonFastForward(MvcError):
    pass


class ConfigError(MvcError):
    pass


class OnCommitCi(MvcError):
    """A commit landed, and mvc.toml's on-commit checks failed on it or could not run: `commit`,
    the `certificate` of the checks when they ran, and whether its branch was `rolled_back` to
    `branch_head` (None: no commit)."""

    def __init__(self, commit: str, certificate: str | None, message: str, hint: str | None = None,
                 rolled_back: bool = False, branch_head: str | None = None):
        super().__init__(message, hint)
        self.commit, self.certificate = commit, certificate
        self.rolled_back, self.branch_head = rolled_back, branch_head


class CheckFailed(OnCommitCi):
    """A semantic-CI gate failed on a commit (raised by repo.commit with on_fail = "rollback")."""

    exit_code = 1

    def __init__(self, commit: str, certificate: str | None, message: str | None = None,
                 rolled_back: bool = False, branch_head: str | None = None, hint: str | None = None):
        super().__init__(commit, certificate, message or f"semantic CI failed on commit {commit[:12]}", hint,
                         rolled_back=rolled_back, branch_head=branch_head)


class CiDidNotRun(OnCommitCi):
    """The on-commit checks could not run on a commit that landed (exit 3)."""

    def __init__(self, commit: str, message: str, hint: str | None = None, rolled_back: bool = False,
                 branch_head: str | None = None):
        super().__init__(commit, None, message, hint, rolled_back, branch_head)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's stop) or SIGHUP (the terminal closed), raised by the CLI's handler so
    that cleanup runs as for Ctrl-C; the exit status is 128 + the signal's number (143, 129)."""

    def __init__(self, signum: int = 15):
        super().__init__(signum)
        self.signum = signum


def interruption(e: BaseException, signum: int | None = None) -> tuple[str, int]:
    """(what stopped a command, its exit status) for a KeyboardInterrupt `e`, or for the signal
    `signum` a handler saw when `e` is another interruption raised during the cleanup."""
    signum = getattr(e, "signum", None) or signum
    if signum == 1:
        return "hung up (the terminal closed)", 129
    if signum:
        return "terminated", 128 + signum
    return "interrupted", 130


class InterruptedAfterLanding(KeyboardInterrupt):
    """Ctrl-C arrived after a commit had landed (its ref moved), or a checkout's files were all in
    place: the work is done and must not be redone, so the message names what landed (and `hint`
    what to do, when not a commit's)."""

    def __init__(self, landed: str, hint: str | None = None):
        super().__init__(landed)
        self.landed, self.hint = landed, hint


# OSErrors the machine's state causes (not mvc's code): what to say, and what the user can do
_ENVIRONMENT = {
    "ENOSPC": ("no space left on device", "free some space and retry"),
    "EDQUOT": ("disk quota exceeded", "free some space and retry"),
    "EACCES": ("permission denied", "check the owner and mode of that path"),
    "EPERM": ("operation not permitted", "check the owner and mode of that path"),
    "EROFS": ("read-only file system", "this needs a writable file system"),
    "EMFILE": ("too many open files", "raise the open-file limit with ulimit -n, or pass fewer jobs "
               "with -j of push, fetch or clone"),
    "ENFILE": ("too many open files in the system", "close other programs' files, or pass fewer jobs "
               "with -j of push, fetch or clone"),
    "ENAMETOOLONG": ("file name too long", "use a shorter path: at most 255 bytes a name, 4096 in all"),
    "ELOOP": ("too many levels of symbolic links", "check the symbolic links on that path"),
    "ENOTDIR": ("a part of the path is not a directory", "check the path"),
    "EISDIR": ("is a directory", "name a file there, or remove the directory"),
    "ENOMEM": ("not enough memory", "close other programs or raise the memory limit with ulimit -v; "
               "a smaller model, or fewer jobs with -j of push, fetch or clone, needs less"),
    "EIO": ("input/output error", "the disk or file system reported an error: check it, e.g. with dmesg, and retry"),
    "EFBIG": ("file too large", "a file-size limit stopped the write: raise it with ulimit -f, or keep the "
              "repository on a file system that allows files this large"),
}


def environment_error(e: BaseException) -> tuple[str, str] | None:
    """(what happened, what to do) for an error of the environment (a full disk, no write
    permission, a read-only file system, the open-file limit, memory or threads running out); None
    for any other error."""
    import errno
    if isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and any(
            s in str(e) for s in ("can't allocate memory", "out of memory"))):  # torch's allocators say so
        return _ENVIRONMENT["ENOMEM"]
    if isinstance(e, RuntimeError) and "can't start new thread" in str(e):
        return ("cannot start a thread: the limit of processes or threads is reached",
                "raise it with ulimit -u, or pass fewer jobs with -j of push, fetch or clone")
    if not isinstance(e, OSError):
        return None
    if isinstance(e, FileNotFoundError) and "No usable temporary directory" in str(e):  # (tempfile's probe of
        return ("no usable temporary directory: each one refused a small file (a full disk?)",  # each folder:
                "free some space there, or set TMPDIR to a writable folder with room")  # importing torch makes it)
    name = errno.errorcode.get(e.errno or 0)
    if name not in _ENVIRONMENT:
        return None
    what, fix = _ENVIRONMENT[name]
    if e.filename and e.filename2:  # a rename: the folder refusing may be the destination's (another
        return (f"{what} moving {e.filename} to {e.filename2}",  # user's folder on a shared repository)
                "check the owner and mode of both folders" if name in ("EACCES", "EPERM") else fix)
    return what + (f" at {e.filename}" if e.filename else ""), fix


def os_error_text(e: OSError) -> str:
    """One line for an OSError in a warning: 'no space left on device at PATH'."""
    found = environment_error(e)
    return found[0] if found else f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")
