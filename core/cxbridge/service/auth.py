"""Who is calling: a tenant by one of its API keys, or the operator by the admin token.

Keys are compared as SHA-256 digests with :func:`hmac.compare_digest`, against every known digest
without stopping at a match, so timing tells nothing about which key or tenant is close.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from starlette.datastructures import Headers

from cxbridge.config import TenantConfig, hash_api_key

__all__ = ["KeyRing", "Principal", "bearer_token"]


@dataclass(frozen=True)
class Principal:
    """A tenant (``tenant`` set) or the operator (``tenant is None``, sees every tenant)."""

    tenant: str | None

    @property
    def is_admin(self) -> bool:
        return self.tenant is None

    def sees(self, tenant: str) -> bool:
        return self.tenant is None or self.tenant == tenant


class KeyRing:
    """The digests of every tenant's API keys, and of the admin token."""

    def __init__(self, tenants: Mapping[str, TenantConfig], admin_token: str | None) -> None:
        self._keys = [(digest, t.name) for t in tenants.values() for digest in t.api_key_hashes]
        self._admin = hash_api_key(admin_token) if admin_token else None

    def tenant_for(self, key: str | None) -> str | None:
        """The tenant owning ``key``, or ``None``."""
        if not key:
            return None
        digest = hash_api_key(key)
        found = None
        for known, tenant in self._keys:
            if hmac.compare_digest(known, digest):
                found = tenant
        return found

    def principal(self, key: str | None, *, admin: bool) -> Principal | None:
        """The caller of ``key``; the admin token counts only where ``admin`` is allowed."""
        if (
            key
            and admin
            and self._admin is not None
            and hmac.compare_digest(self._admin, hash_api_key(key))
        ):
            return Principal(None)
        tenant = self.tenant_for(key)
        return Principal(tenant) if tenant is not None else None


def bearer_token(headers: Headers) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None
