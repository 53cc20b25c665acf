"""Fair-share preemptors: the ids of the workloads that preempted a workload for fair share (it never preempts
them for fair share in turn); None for none.

Revision ID: 0024
Revises: 0023
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workloads") as batch:
        batch.add_column(sa.Column("fair_share_preempted_by", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workloads") as batch:
        batch.drop_column("fair_share_preempted_by")
