"""Demand: every request and what it got (granted, refused for capacity or quota), for
showback's refusals and `podbay advise`.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "podbay_demand",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("key", sa.String(512), nullable=False, index=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("team", sa.String(255), nullable=True),
        sa.Column("profile", sa.String(64), nullable=False),
        sa.Column("pool", sa.String(64), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
    )
    op.create_index("demand_period", "podbay_demand", ["at"])


def downgrade() -> None:
    op.drop_index("demand_period", "podbay_demand")
    op.drop_table("podbay_demand")
