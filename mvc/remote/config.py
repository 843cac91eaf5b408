"""Remotes by name: listing, adding and removing them in .mvc/config and opening their transports."""
from __future__ import annotations

import contextlib
import os
import re

from ..errors import BadName, ConfigError, MvcError
from ..listing_cache import ListingCache, listing_cache_path
from ..objects import check_remote_name  # noqa: F401  (mvc.remote exports it from here)
from ..repo import Repo
from ..transfer import DEFAULT_JOBS
from ..transport import (Transport, check_endpoint, configured_remote, is_url, normalize_url, open_configured_remote,
                         open_transport, remote_section, set_url_command)

DEFAULT_REMOTE = "origin"


def list_remotes(repo: Repo) -> list[dict]:
    out = []
    for section in repo.config.sections():
        m = re.fullmatch(r'remote "(.+)"', section)
        if m and repo.config.has_option(section, "url"):
            out.append({"name": m.group(1), "url": configured_remote(repo.config, m.group(1), repo.root)[0],
                        "endpoint": repo.config.get(section, "endpoint", fallback=None),
                        "lazy": repo.config.getboolean(section, "promisor", fallback=False)})
    return sorted(out, key=lambda r: r["name"])


def add_remote(repo: Repo, name: str, url: str, endpoint: str | None = None, promisor: bool = False) -> dict:
    check_remote_name(name)
    if repo.config.has_section(remote_section(name)):
        raise BadName(f"remote {name!r} already exists", f"remove it first: mvc remote remove {name}")
    endpoint = check_endpoint(endpoint, normalize_url(url))
    repo.set_config(f"remote.{name}.url", url)  # (stored as Repo.checked_remote_url makes it)
    url = repo.get_config(f"remote.{name}.url")
    if endpoint:
        repo.set_config(f"remote.{name}.endpoint", endpoint)
    if promisor:
        repo.set_config(f"remote.{name}.promisor", "true")
    return {"name": name, "url": url, "endpoint": endpoint, "lazy": promisor}


def remove_remote(repo: Repo, name: str, force: bool = False) -> dict:
    section = remote_section(name)
    if not repo.config.has_section(section):
        raise ConfigError(f"no remote named {name!r}", "see mvc remote -v")
    if repo.config.getboolean(section, "promisor", fallback=False) and not force:
        raise MvcError(f"remote {name!r} is where this lazy clone fetches its missing blobs",
                       f"if it moved: {set_url_command(name, 'NEW_URL')}; --force removes it anyway, and "
                       "blobs not fetched yet can then no longer be had")
    for option in list(repo.config.options(section)):
        repo.set_config(f"remote.{name}.{option}", None)
    with contextlib.suppress(OSError):  # (what was last read there: of no use now)
        os.unlink(listing_cache_path(repo.dir, name))
    removed = []
    for ref, oid in repo.refs.list(f"refs/remotes/{name}/").items():
        repo.refs.update(ref, None, expected=oid, message=f"remote remove {name}")
        removed.append(ref)
    return {"name": name, "removed_refs": removed}


def resolve_remote(repo: Repo, remote: str | None) -> str:
    """The remote's name (default: origin, or the only remote) or a URL given directly."""
    if remote:
        return remote
    names = [r["name"] for r in list_remotes(repo)]
    if DEFAULT_REMOTE in names or not names:
        if not names:
            raise ConfigError("no remote configured", "add one with mvc remote add origin URL")
        return DEFAULT_REMOTE
    if len(names) == 1:
        return names[0]
    raise ConfigError("several remotes and none is named origin", "name one: " + ", ".join(names))


def open_remote(repo: Repo, remote: str | None, jobs: int = DEFAULT_JOBS,
                transport: Transport | None = None) -> tuple[str | None, Transport]:
    """(remote name or None for a plain URL, transport, with this repository's cache of what it
    last read of the remote's refs and certificate indexes: see mvc.listing_cache)."""
    remote = resolve_remote(repo, remote)
    if repo.config.has_section(remote_section(remote)):
        if transport is None:
            transport = open_configured_remote(repo.config, remote, repo.root, jobs)
        transport.listing_cache = ListingCache(listing_cache_path(repo.dir, remote))
        return remote, transport
    if is_url(remote):
        return None, transport or open_transport(repo.checked_remote_url(remote), None, jobs)
    raise ConfigError(f"no remote named {remote!r}", "add it with mvc remote add NAME URL, or see mvc remote -v")
