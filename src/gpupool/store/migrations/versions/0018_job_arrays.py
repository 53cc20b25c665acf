"""Job arrays: a task of an array is a child workload with its index, unique within its array; an index on
(status, array_index) keeps `ls` and the scheduler from reading every pending task.

Revision ID: 0018
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workloads", schema=None) as batch_op:
        batch_op.add_column(sa.Column("array_index", sa.Integer(), nullable=True))
        batch_op.create_unique_constraint("uq_workloads_parent_array_index", ["parent_id", "array_index"])
        batch_op.create_index("ix_workloads_status_array_index", ["status", "array_index"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("workloads", schema=None) as batch_op:
        batch_op.drop_index("ix_workloads_status_array_index")
        batch_op.drop_constraint("uq_workloads_parent_array_index", type_="unique")
        batch_op.drop_column("array_index")
