"""Remotes: push, fetch, pull and clone between a Repo and a transport (directory or S3).

The names below are the remote API; the modules: config (remotes by name), common (what the
transfers share), pushing, repairing (fsck --repair-from), fetching (fetch, pull), cloning.

Only missing objects move, found without listing the remote's objects:
- push walks the local commit graph from the branch tip down to the commits the remote's refs
  already reach, asks the remote which of the remaining commits, trees and blobs it has (one
  existence check per object, in parallel) and uploads the rest in three phases, each made
  durable before the next: blobs, trees, commits, so an interrupted push resumes by skipping what
  arrived. Only what the remote's refs reach is trusted to be complete: below any other commit or
  tree found there (a gc killed mid-sweep leaves such garbage half deleted, though it deletes
  commits, then trees, then blobs) every object is checked, as fetch does here. The remote ref
  moves last, by compare-and-swap. A push to a directory holding an mvc repository holds off its
  owner's gc until then (mvc.transport.DirectoryTransport.writing and has).
- push --repair trusts nothing there: every object the pushed history reaches is read back and
  re-hashed; what is missing is sent and what is damaged is sent again over the bad copy, from
  local copies re-hashed first (one damaged here too is reported, never sent).
- fetch walks the remote's commit graph from its refs down to commits that local refs reach
  (complete by construction), downloads the missing commits, trees and blobs in parallel,
  verifies every object's BLAKE3 id on receipt (a bad object is rejected, never stored), writes
  blobs, then trees, then commits, and only then moves refs/remotes/<remote>/<branch>. An object
  gone because the remote's branches moved since they were listed (a deleted branch whose history
  the gc of a repository serving as the remote collected) is no damage: the fetch starts over
  from the branches as they are then, keeping what arrived.
Certificates (the index .mvc/certs/<2>/<62> of certificate ids per commit) and tags travel with
the commits they name, and so does what a certificate names: its data blobs, trees, and commits
with their history (a migration check names host commits of other branches), so that `mvc verify`
and `mvc fsck` work in every clone. A lazy fetch (clone --lazy) takes commits, trees and certificates only and
records the blob ids as promised; mvc.transport.LazyRemoteStore fetches them on first use.
No torch here: remotes move bytes.
"""
from __future__ import annotations

from ..transfer import DEFAULT_JOBS, Progress
from ..transport import is_url
from .cloning import clone, default_clone_dir
from .common import MAX_META_BYTES, NAMED_MAX_BYTES, Pool, ancestors, is_ancestor, receive
from .config import (DEFAULT_REMOTE, add_remote, check_remote_name, list_remotes, open_remote,
                     remove_remote, resolve_remote)
from .fetching import fetch, pull
from .pushing import RepairIncomplete, push
from .repairing import repair

from ..interrupts import holding_user_handlers

# (each call whole before a program's own signal handler runs: see mvc.interrupts.call_holding_user_handlers)
clone, fetch, pull, push, repair = (holding_user_handlers(f) for f in (clone, fetch, pull, push, repair))

__all__ = ["DEFAULT_JOBS", "DEFAULT_REMOTE", "MAX_META_BYTES", "NAMED_MAX_BYTES", "Pool", "Progress",
           "RepairIncomplete", "add_remote", "ancestors", "check_remote_name", "clone", "default_clone_dir",
           "fetch", "is_ancestor", "is_url", "list_remotes", "open_remote", "pull", "push", "receive",
           "remove_remote", "repair", "resolve_remote"]
