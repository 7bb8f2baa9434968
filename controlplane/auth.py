"""Organizations and API keys.

Keys look like Daytona's (`dtn_` + 64 hex characters) and are stored as their SHA-256
only: a request's key is hashed, looked up by that hash and compared in constant time.
Every query of every service is scoped by the organization a key belongs to.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass

from sqlalchemy import Engine, delete, insert, select

from controlplane.errors import BadRequest, Conflict, Unauthorized
from controlplane.store.schema import api_keys, organizations
from proxy.caches import BoundedDict

KEY_PREFIX = "dtn_"
DEFAULT_ORGANIZATION = "default"


@dataclass(frozen=True)
class Principal:
    """Who a request acts for."""

    organization_id: str
    api_key_id: str


@dataclass(frozen=True)
class NewKey:
    organization_id: str
    organization_name: str
    key: str  # shown once, never stored


def new_key() -> str:
    return KEY_PREFIX + secrets.token_hex(32)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


# A key's lookup is remembered this long: every request authenticates, and a listing of
# 1,000 sandboxes is 10 requests. `revoke` drops its entry, so a revoked key fails at once
# here (another control plane sharing the database would keep it up to this long).
AUTH_CACHE_SECONDS = 5.0


class Keys:
    """Blocking database calls: run them in a worker thread (`anyio.to_thread`)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._cache: BoundedDict[str, tuple[float, Principal]] = BoundedDict(10_000)

    def organization_id(self, name: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(select(organizations.c.id).where(organizations.c.name == name)).scalar()

    def ensure_organization(self, name: str) -> str:
        existing = self.organization_id(name)
        if existing is not None:
            return existing
        org_id = str(uuid.uuid4())
        with self.engine.begin() as conn:
            conn.execute(insert(organizations).values(id=org_id, name=name, created_at=time.time()))
        return org_id

    def create_key(self, organization: str = DEFAULT_ORGANIZATION, *, name: str = "key",
                   create_organization: bool = True) -> NewKey:
        if not organization.strip() or len(organization) > 255:
            raise BadRequest("an organization name is 1 to 255 characters")
        org_id = self.ensure_organization(organization) if create_organization else self.organization_id(organization)
        if org_id is None:
            raise Conflict(f"no organization named {organization!r}")
        key = new_key()
        with self.engine.begin() as conn:
            conn.execute(insert(api_keys).values(id=str(uuid.uuid4()), organization_id=org_id, name=name,
                                                 key_hash=key_hash(key), created_at=time.time()))
        return NewKey(org_id, organization, key)

    def add_hash(self, organization: str, digest: str, name: str = "adopted") -> None:
        org_id = self.ensure_organization(organization)
        with self.engine.begin() as conn:
            conn.execute(insert(api_keys).values(id=str(uuid.uuid4()), organization_id=org_id, name=name,
                                                 key_hash=digest, created_at=time.time()))

    def has_key(self, key: str) -> bool:
        return self.authenticate(key) is not None

    def authenticate(self, key: str) -> Principal | None:
        if not key:
            return None
        digest = key_hash(key)
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        with self.engine.connect() as conn:
            row = conn.execute(select(api_keys.c.id, api_keys.c.organization_id, api_keys.c.key_hash)
                               .where(api_keys.c.key_hash == digest)).first()
        # The lookup found the row by its hash; compare again in constant time so the
        # answer never depends on how much of a guess matched.
        if row is None or not hmac.compare_digest(row.key_hash, digest):
            return None  # unknown keys are not cached: a key made a moment ago works at once
        principal = Principal(row.organization_id, row.id)
        self._cache[digest] = (time.monotonic() + AUTH_CACHE_SECONDS, principal)
        return principal

    def revoke(self, key: str) -> bool:
        """Delete the key; False if it was not one. Its requests fail from now on."""
        digest = key_hash(key)
        with self.engine.begin() as conn:
            deleted = conn.execute(delete(api_keys).where(api_keys.c.key_hash == digest)).rowcount
        self._cache.pop(digest, None)
        return bool(deleted)

    def hashes(self) -> dict[str, str]:
        """Every key's hash and its organization: the proxy's view (registry `api_keys`)."""
        with self.engine.connect() as conn:
            return {row.key_hash: row.organization_id
                    for row in conn.execute(select(api_keys.c.key_hash, api_keys.c.organization_id))}


def bearer(authorization: str | None) -> str:
    if not authorization or authorization[:7].lower() != "bearer ":
        raise Unauthorized("Missing credentials: send 'Authorization: Bearer <API key>'")
    return authorization[7:].strip()
