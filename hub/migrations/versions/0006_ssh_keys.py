"""People's SSH public keys (hub/sshkeys.py).

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "podbay_ssh_keys",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("comment", sa.String(255), nullable=False),
        sa.Column("added", sa.Float, nullable=False),
        sa.UniqueConstraint("user", "fingerprint", name="one_key_once"),
    )
    op.create_index("ix_podbay_ssh_keys_user", "podbay_ssh_keys", ["user"])


def downgrade() -> None:
    op.drop_index("ix_podbay_ssh_keys_user", "podbay_ssh_keys")
    op.drop_table("podbay_ssh_keys")
