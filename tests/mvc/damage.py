"""Damage for the mvc tests: flip one bit of a byte in a (read-only) object, pack or index file;
forge an object; name the file a patched *at system call (dir_fd=...) acts on."""
import os


def flip_byte(path, pos: int = 3, mask: int = 1) -> None:
    """XOR the byte at `pos` of `path` with `mask`, in place."""
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ mask]))


def forge(repo, obj: dict) -> str:
    """Store a commit or tree as it is, skipping the checks write_object makes (what another
    program, a hand edit or a hostile remote can do); returns its id."""
    import json

    from mvc.objects import hash_bytes
    data = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()  # (canonical_json
    return repo.store.put(data, oid=hash_bytes(data))                                            # refuses some)


def at_path(name, dir_fd=None) -> str:
    """The path an `os` call given `name` and `dir_fd` (as checkout's writes are) acts on, for a
    test patching os.replace or os.link to fail or race on one file (Linux: /proc/self/fd)."""
    name = os.fspath(name)
    if dir_fd is None:
        return name
    return os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), name)
