"""The policies a server judges under: the store's active versions, else the starter pack.

Every method that reads or writes the store, or parses a stored text, runs in a worker
thread (`asyncio.to_thread`), so the event loop never waits on the database. Parsed texts are
kept in a bounded LRU (inline policies would otherwise add one entry per request, forever).

Example:
    >>> catalog = PolicyCatalog(Store())
    >>> policy = asyncio.run(catalog.policy("spam"))
"""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

from magistrate.errors import ConfigError, NotFound
from magistrate.policy import Policy, builtin_policy_names, load_policy, parse_policy
from magistrate.server.limits import TTLCache
from magistrate.store import PolicyVersion, Store

POLICIES_KEPT = 1024
POLICIES_MAX_BYTES = 128 * 1024 * 1024
"""Parsed policies kept per process, estimated from their texts (`policy_size`)."""
"""Parsed policy texts kept per process, least recently used dropped first."""
ACTIVE_TTL_S = 1.0
"""How long the active-version map is reused before the store is read again."""


class PolicyCatalog:
    """Policy ids -> active texts, versions and activation, over one store.

    Args:
        store: Where policy texts, versions and the active pointer live.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._parsed: TTLCache[Policy] = TTLCache(
            math.inf, POLICIES_KEPT, max_bytes=POLICIES_MAX_BYTES, size_of=policy_size
        )
        self._builtin_names = frozenset(builtin_policy_names())
        self._builtins: dict[str, Policy] = {}
        self._active: tuple[float, dict[str, str]] = (-math.inf, {})

    def load_directory(self, folder: Path) -> list[Policy]:
        """Activate every `*.md` policy in a folder (files win over earlier API uploads).

        Blocking: called once while the server starts, off the event loop.

        Raises:
            ConfigError: The folder does not exist or holds no policies.
            PolicyError: A file cannot be parsed (the server does not start half-configured).
        """
        if not folder.is_dir():
            raise ConfigError(f"Policy folder {folder} does not exist.")
        files = sorted(folder.glob("*.md"))
        if not files:
            raise ConfigError(f"Policy folder {folder} holds no .md policies.")
        loaded = [load_policy(path) for path in files]
        active = self.store.active_policies()
        for policy in loaded:
            if active.get(policy.id) != policy.hash:
                self.store.activate_policy(policy)
        self._forget_active()
        return loaded

    async def active(self) -> dict[str, str]:
        """Policy id -> active hash, re-read from the store at most once a second."""
        read_at, active = self._active
        if time.monotonic() - read_at > ACTIVE_TTL_S:
            active = await asyncio.to_thread(self.store.active_policies)
            self._active = (time.monotonic(), active)
        return active

    async def policy(self, policy_id: str) -> Policy:
        """The active text of a policy id: the store's active version, else a bundled one.

        Raises:
            NotFound: Neither has it.
            StoreUnavailable: The store cannot be read.
        """
        digest = (await self.active()).get(policy_id)
        if digest is not None:
            return await self.by_hash(digest)
        if policy_id in self._builtin_names:
            policy = self._builtins.get(policy_id)
            if policy is None:  # package data: parsed once per process
                policy = await asyncio.to_thread(load_policy, policy_id)
                self._builtins[policy_id] = policy
            return policy
        raise NotFound(
            f"No policy {policy_id!r}. GET /v1/policies lists the ids this server knows; "
            "PUT /v1/policies/{id} adds one."
        )

    async def by_hash(self, digest: str) -> Policy:
        """A stored text by its hash, parsed (once per process while it stays in the LRU)."""
        policy = self._parsed.get(digest)
        if policy is None:
            policy = await asyncio.to_thread(self._read_and_parse, digest)
            self._parsed.put(digest, policy)
        return policy

    def _read_and_parse(self, digest: str) -> Policy:
        return parse_policy(self.store.policy_text(digest), source=f"store:{digest[:12]}")

    async def ids(self) -> list[str]:
        """Every id the server can judge under, sorted."""
        return sorted(set(await self.active()) | self._builtin_names)

    async def source(self, policy: Policy) -> str:
        """`store` when the policy's id has a stored active version, else `builtin`."""
        return "store" if policy.id in await self.active() else "builtin"

    async def put(self, policy: Policy, *, activate: bool) -> bool:
        """Store a policy text (a new version unless the same text exists); True if new."""
        created = await asyncio.to_thread(self._put, policy, activate)
        self._forget_active()
        return created

    def _put(self, policy: Policy, activate: bool) -> bool:
        known = self.store.has_policy(policy.hash)
        if activate:
            self.store.activate_policy(policy)
        else:
            self.store.add_policy(policy)
        return not known

    async def activate(self, policy_id: str, ref: str) -> Policy:
        """Make a stored version (`@N`, hash prefix or version label) the active one.

        Raises:
            NotFound: No such version (404); an outage is `StoreUnavailable` (503).
        """
        version = await asyncio.to_thread(self.store.policy_version, policy_id, ref)
        policy = await self.by_hash(version.hash)
        await asyncio.to_thread(self.store.activate_policy, policy)
        self._forget_active()
        return policy

    async def versions(self, policy_id: str) -> list[PolicyVersion]:
        """Every stored text of a policy, oldest first.

        Raises:
            NotFound: The id has no stored version and is not a bundled policy.
        """
        versions = await asyncio.to_thread(self.store.policy_versions, policy_id)
        if not versions and policy_id not in self._builtin_names:
            raise NotFound(f"No policy {policy_id!r}.")
        return versions

    def _forget_active(self) -> None:
        self._active = (-math.inf, {})


def policy_size(policy: Policy) -> int:
    """A parsed policy's memory, roughly: its text, its body, and the sections and rules
    cut from them (about four times the text), plus a fixed part."""
    return 4 * len(policy.text.encode("utf-8", "replace")) + 4096


__all__ = ["POLICIES_KEPT", "POLICIES_MAX_BYTES", "PolicyCatalog", "policy_size"]
