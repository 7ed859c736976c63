"""People's secrets, encrypted (hub/secrets.py).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "podbay_secrets",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("ciphertext", sa.Text, nullable=False),
        sa.Column("updated", sa.Float, nullable=False),
        sa.UniqueConstraint("user", "name", name="one_value_per_name"),
    )
    op.create_index("ix_podbay_secrets_user", "podbay_secrets", ["user"])


def downgrade() -> None:
    op.drop_index("ix_podbay_secrets_user", "podbay_secrets")
    op.drop_table("podbay_secrets")
