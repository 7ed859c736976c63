"""The device ledger: allocations and their device claims.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "podbay_allocations",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("key", sa.String(512), nullable=False, unique=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("team", sa.String(255), nullable=True),
        sa.Column("profile", sa.String(64), nullable=False),
        sa.Column("units_num", sa.Integer, nullable=False),
        sa.Column("units_den", sa.Integer, nullable=False),
        sa.Column("gpus", sa.Integer, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("ref", sa.Text, nullable=False),
    )
    op.create_index("ix_podbay_allocations_user", "podbay_allocations", ["user"])
    op.create_index("ix_podbay_allocations_team", "podbay_allocations", ["team"])
    op.create_table(
        "podbay_claims",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("allocation_id", sa.Integer,
                  sa.ForeignKey("podbay_allocations.id", ondelete="CASCADE"), nullable=False),
        sa.Column("node", sa.String(255), nullable=False),
        sa.Column("device", sa.String(255), nullable=False),
        sa.Column("visible_id", sa.String(255), nullable=False),
        sa.UniqueConstraint("node", "device", name="one_claim_per_device"),
    )


def downgrade() -> None:
    op.drop_table("podbay_claims")
    op.drop_table("podbay_allocations")
