"""Snapshots built from images (issue 18).

A branch of its own off 0001, as the resources' 0100 is, so it merges beside other
branches' revisions without renumbering (`migrate` upgrades to "heads").

Revision ID: 0300
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0300"
down_revision = "0001"
branch_labels = ("snapshots",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "snapshots",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("organization_id", sa.String(36), sa.ForeignKey("organizations.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("image_name", sa.Text),
        sa.Column("dockerfile", sa.Text),
        sa.Column("error_reason", sa.Text),
        sa.Column("size", sa.Float),
        sa.Column("entrypoint", sa.JSON),
        sa.Column("cpu", sa.Integer, nullable=False),
        sa.Column("gpu", sa.Integer, nullable=False),
        sa.Column("mem", sa.Integer, nullable=False),
        sa.Column("disk", sa.Integer, nullable=False),
        sa.Column("store_name", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("last_used_at", sa.Float),
        sa.UniqueConstraint("organization_id", "name", name="uq_snapshots_organization_name"),
    )


def downgrade() -> None:
    op.drop_table("snapshots")
