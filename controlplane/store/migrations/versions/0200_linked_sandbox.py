"""Linked sandboxes: a follower's owner (Daytona's `linkedSandboxId`).

A branch of its own off 0001 (`migrate` upgrades to "heads"), so other revisions of the
core merge without renumbering.

Revision ID: 0200
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0200"
down_revision = "0001"
branch_labels = ("network",)
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sandboxes") as table:  # SQLite alters by copying the table
        table.add_column(sa.Column("linked_sandbox_id", sa.String(63)))
        table.create_index("ix_sandboxes_linked_sandbox_id", ["linked_sandbox_id"])


def downgrade() -> None:
    with op.batch_alter_table("sandboxes") as table:
        table.drop_index("ix_sandboxes_linked_sandbox_id")
        table.drop_column("linked_sandbox_id")
