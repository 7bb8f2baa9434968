"""The tables, as the migrations leave them (queries are written against these).

Adding a resource: a new `Table` here and a new revision in `migrations/versions/`
(`alembic revision -m "..."` with `script_location` set to that directory) that creates it.
Times are unix seconds (floats): the same on SQLite and PostgreSQL, no time-zone traps.
"""

from __future__ import annotations

from sqlalchemy import (
                        JSON,
                        Boolean,
                        Column,
                        Float,
                        ForeignKey,
                        Index,
                        Integer,
                        MetaData,
                        String,
                        Table,
                        Text,
                        UniqueConstraint,
)

metadata = MetaData()

organizations = Table(
    "organizations", metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(255), nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
)

api_keys = Table(
    "api_keys", metadata,
    Column("id", String(36), primary_key=True),
    Column("organization_id", String(36), ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False,
           index=True),
    Column("name", String(255), nullable=False),
    # SHA-256 of the key, hex; the key itself is never stored.
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
)

sandboxes = Table(
    "sandboxes", metadata,
    Column("id", String(63), primary_key=True),
    Column("organization_id", String(36), ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(255), nullable=False),
    # The state machine (controlplane/sandboxes/states.py): what is, what is wanted, and
    # whether a change is in progress.
    Column("state", String(32), nullable=False),
    Column("desired_state", String(32), nullable=False),
    Column("pending", Boolean, nullable=False, default=False),
    Column("error_reason", Text),
    Column("snapshot", String(255)),
    Column("os_user", String(64), nullable=False),
    Column("env", JSON, nullable=False),
    Column("labels", JSON, nullable=False),
    Column("public", Boolean, nullable=False),
    Column("target", String(64), nullable=False),
    Column("cpu", Integer, nullable=False),
    Column("gpu", Integer, nullable=False),
    Column("memory", Integer, nullable=False),  # GiB
    Column("disk", Integer, nullable=False),  # GiB
    Column("auto_stop_interval", Integer, nullable=False),  # minutes, 0 = never
    Column("auto_archive_interval", Integer, nullable=False),  # minutes, 0 = the maximum
    Column("auto_delete_interval", Integer, nullable=False),  # minutes, < 0 never, 0 on stop
    Column("volumes", JSON, nullable=False),
    Column("network_block_all", Boolean, nullable=False),
    Column("network_allow_list", Text),
    Column("domain_allow_list", Text),
    # A linked follower's owner (revision 0200); followers go with their owner.
    Column("linked_sandbox_id", String(63), index=True),
    Column("preview_token", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("last_activity_at", Float),
    # Settings without a column of their own yet (ttl, auto-pause, ...).
    Column("extra", JSON, nullable=False),
    UniqueConstraint("organization_id", "name", name="uq_sandboxes_organization_name"),
    Index("ix_sandboxes_organization_state", "organization_id", "state"),
    Index("ix_sandboxes_organization_created", "organization_id", "created_at"),
)

# -- resources (migration 0100): volumes, secrets, warm pools -------------------------

volumes = Table(
    "volumes", metadata,
    Column("id", String(36), primary_key=True),
    Column("organization_id", String(36), ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(255), nullable=False),
    Column("state", String(32), nullable=False),  # ready, pending_delete (while a delete checks usage)
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("last_used_at", Float),
    UniqueConstraint("organization_id", "name", name="uq_volumes_organization_name"),
)

secrets = Table(
    "secrets", metadata,
    Column("id", String(36), primary_key=True),
    Column("organization_id", String(36), ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(255), nullable=False),
    Column("description", Text),
    # The value is only ever read to inject it into a sandbox; no response carries it.
    Column("value", Text, nullable=False),
    Column("hosts", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    UniqueConstraint("organization_id", "name", name="uq_secrets_organization_name"),
)

warm_pools = Table(
    "warm_pools", metadata,
    Column("id", String(36), primary_key=True),
    Column("organization_id", String(36), ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False),
    Column("snapshot", String(255), nullable=False),
    Column("target", String(64), nullable=False),
    Column("pool", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    UniqueConstraint("organization_id", "snapshot", "target", name="uq_warm_pools_organization_snapshot"),
)

snapshots = Table(
    "snapshots", metadata,
    Column("id", String(36), primary_key=True),
    Column("organization_id", String(36), ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(255), nullable=False),
    Column("state", String(32), nullable=False),
    Column("image_name", Text),
    Column("dockerfile", Text),
    Column("error_reason", Text),
    Column("size", Float),
    Column("entrypoint", JSON),
    Column("cpu", Integer, nullable=False),
    Column("gpu", Integer, nullable=False),
    Column("mem", Integer, nullable=False),
    Column("disk", Integer, nullable=False),
    Column("store_name", String(64), nullable=False),  # its name in the runtime's snapshot store
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("last_used_at", Float),
    UniqueConstraint("organization_id", "name", name="uq_snapshots_organization_name"),
)
