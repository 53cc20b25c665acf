"""Workload parents: a child workload (a pipeline step, a sweep trial, a service replica) names the
controller workload it was created for.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workloads", schema=None) as batch_op:
        batch_op.add_column(sa.Column("parent_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key("fk_workloads_parent_id_workloads", "workloads", ["parent_id"], ["id"])
        batch_op.create_index("ix_workloads_parent_id", ["parent_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("workloads", schema=None) as batch_op:
        batch_op.drop_index("ix_workloads_parent_id")
        batch_op.drop_constraint("fk_workloads_parent_id_workloads", type_="foreignkey")
        batch_op.drop_column("parent_id")
