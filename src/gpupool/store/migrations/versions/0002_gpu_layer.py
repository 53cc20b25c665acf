"""The GPU layer: each node's discovered GPU inventory and backend, and per-GPU settings (sharing mode, MIG
layout, health mark, MPS daemon state).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("gpu_inventory", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("gpu_backend", sa.String(length=16), nullable=False, server_default=""))
        batch_op.add_column(sa.Column("gpu_simulated", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column("gpus_version", sa.Integer(), nullable=False, server_default="0"))
    op.create_table(
        "gpu_settings",
        sa.Column("node", sa.String(length=63), nullable=False),
        sa.Column("gpu_index", sa.Integer(), nullable=False),
        sa.Column("sharing_mode", sa.String(length=16), nullable=False),
        sa.Column("mig_layout", sa.Text(), nullable=True),
        sa.Column("unhealthy_reason", sa.Text(), nullable=True),
        sa.Column("unhealthy_at", sa.Double(), nullable=True),
        sa.Column("reconfiguring", sa.Boolean(), nullable=False),
        sa.Column("mps_state", sa.String(length=16), nullable=True),
        sa.Column("mps_message", sa.Text(), nullable=False),
        sa.Column("mps_pid", sa.Integer(), nullable=True),
        sa.Column("mps_checked_at", sa.Double(), nullable=True),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(["node"], ["nodes.name"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("node", "gpu_index"),
    )


def downgrade() -> None:
    op.drop_table("gpu_settings")
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.drop_column("gpus_version")
        batch_op.drop_column("gpu_simulated")
        batch_op.drop_column("gpu_backend")
        batch_op.drop_column("gpu_inventory")
