"""Service traffic: requests, errors and streamed chunks per (service, minute), so a service's request rate
over time survives a server restart.

Revision ID: 0022
Revises: 0021
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "service_traffic",
        sa.Column("service_id", sa.Integer(), nullable=False),
        sa.Column("minute", sa.Double(), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["service_id"], ["workloads.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("service_id", "minute"),
    )
    op.create_index("ix_service_traffic_minute", "service_traffic", ["minute"])


def downgrade() -> None:
    op.drop_index("ix_service_traffic_minute", table_name="service_traffic")
    op.drop_table("service_traffic")
