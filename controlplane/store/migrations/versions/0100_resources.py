"""Volumes, secrets and warm pools.

A branch of its own off 0001 (`migrate` upgrades to "heads"), so the core's revisions and
these merge without renumbering.

Revision ID: 0100
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0100"
down_revision = "0001"
branch_labels = ("resources",)
depends_on = None


def _owned(name: str, *columns: sa.Column, unique: tuple[str, ...]) -> None:
    op.create_table(
        name,
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("organization_id", sa.String(36), sa.ForeignKey("organizations.id", ondelete="CASCADE"),
                  nullable=False),
        *columns,
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.UniqueConstraint("organization_id", *unique, name=f"uq_{name}_organization_{unique[0]}"),
    )


def upgrade() -> None:
    _owned("volumes", sa.Column("name", sa.String(255), nullable=False),
           sa.Column("state", sa.String(32), nullable=False), sa.Column("last_used_at", sa.Float),
           unique=("name",))
    _owned("secrets", sa.Column("name", sa.String(255), nullable=False), sa.Column("description", sa.Text),
           sa.Column("value", sa.Text, nullable=False), sa.Column("hosts", sa.JSON, nullable=False),
           unique=("name",))
    _owned("warm_pools", sa.Column("snapshot", sa.String(255), nullable=False),
           sa.Column("target", sa.String(64), nullable=False), sa.Column("pool", sa.Integer, nullable=False),
           unique=("snapshot", "target"))


def downgrade() -> None:
    for name in ("warm_pools", "secrets", "volumes"):
        op.drop_table(name)
