"""Training jobs.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "podbay_jobs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("team", sa.String(255), nullable=True),
        sa.Column("image", sa.String(255), nullable=False),
        sa.Column("command", sa.Text, nullable=False),
        sa.Column("workdir", sa.Text, nullable=False),
        sa.Column("volumes", sa.Text, nullable=False),
        sa.Column("env", sa.Text, nullable=False),
        sa.Column("gpus", sa.Integer, nullable=False),
        sa.Column("pool", sa.String(64), nullable=False),
        sa.Column("from_workspace", sa.String(255), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("exit_code", sa.Integer, nullable=True),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("devices", sa.Text, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("started", sa.Float, nullable=True),
        sa.Column("finished", sa.Float, nullable=True),
        sa.Column("ref", sa.Text, nullable=False),
    )
    op.create_index("ix_podbay_jobs_user", "podbay_jobs", ["user"])
    op.create_index("ix_podbay_jobs_team", "podbay_jobs", ["team"])
    op.create_index("ix_podbay_jobs_state", "podbay_jobs", ["state"])


def downgrade() -> None:
    op.drop_table("podbay_jobs")
