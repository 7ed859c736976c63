"""A job's GPUs on each node are called so: `gpus` read as the job's total everywhere else
(the API's `Job.gpus` is gpus_per_node × nodes).

Revision ID: 0009
Revises: 0008
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("podbay_jobs") as batch:
        batch.alter_column("gpus", new_column_name="gpus_per_node")


def downgrade() -> None:
    with op.batch_alter_table("podbay_jobs") as batch:
        batch.alter_column("gpus_per_node", new_column_name="gpus")
