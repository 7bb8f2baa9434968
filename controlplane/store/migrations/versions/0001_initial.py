"""Organizations, API keys and sandboxes.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "organizations",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False, unique=True),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("organization_id", sa.String(36), sa.ForeignKey("organizations.id", ondelete="CASCADE"),
                  nullable=False, index=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "sandboxes",
        sa.Column("id", sa.String(63), primary_key=True),
        sa.Column("organization_id", sa.String(36), sa.ForeignKey("organizations.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("desired_state", sa.String(32), nullable=False),
        sa.Column("pending", sa.Boolean, nullable=False),
        sa.Column("error_reason", sa.Text),
        sa.Column("snapshot", sa.String(255)),
        sa.Column("os_user", sa.String(64), nullable=False),
        sa.Column("env", sa.JSON, nullable=False),
        sa.Column("labels", sa.JSON, nullable=False),
        sa.Column("public", sa.Boolean, nullable=False),
        sa.Column("target", sa.String(64), nullable=False),
        sa.Column("cpu", sa.Integer, nullable=False),
        sa.Column("gpu", sa.Integer, nullable=False),
        sa.Column("memory", sa.Integer, nullable=False),
        sa.Column("disk", sa.Integer, nullable=False),
        sa.Column("auto_stop_interval", sa.Integer, nullable=False),
        sa.Column("auto_archive_interval", sa.Integer, nullable=False),
        sa.Column("auto_delete_interval", sa.Integer, nullable=False),
        sa.Column("volumes", sa.JSON, nullable=False),
        sa.Column("network_block_all", sa.Boolean, nullable=False),
        sa.Column("network_allow_list", sa.Text),
        sa.Column("domain_allow_list", sa.Text),
        sa.Column("preview_token", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("last_activity_at", sa.Float),
        sa.Column("extra", sa.JSON, nullable=False),
        sa.UniqueConstraint("organization_id", "name", name="uq_sandboxes_organization_name"),
    )
    op.create_index("ix_sandboxes_organization_state", "sandboxes", ["organization_id", "state"])
    op.create_index("ix_sandboxes_organization_created", "sandboxes", ["organization_id", "created_at"])


def downgrade() -> None:
    op.drop_table("sandboxes")
    op.drop_table("api_keys")
    op.drop_table("organizations")
