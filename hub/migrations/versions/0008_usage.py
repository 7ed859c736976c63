"""GPU usage: holdings (who held what, when, with its idle clock), hourly utilisation and
the idle rules' actions.

Revision ID: 0008
Revises: 0007
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "podbay_holdings",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("key", sa.String(512), nullable=False, index=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("user", sa.String(255), nullable=False, index=True),
        sa.Column("team", sa.String(255), nullable=True),
        sa.Column("profile", sa.String(64), nullable=False),
        sa.Column("pool", sa.String(64), nullable=True),
        sa.Column("units_num", sa.Integer, nullable=False, server_default="0"),
        sa.Column("units_den", sa.Integer, nullable=False, server_default="1"),
        sa.Column("gpus", sa.Integer, nullable=False, server_default="0"),
        sa.Column("devices", sa.Text, nullable=False, server_default="[]"),
        sa.Column("ref", sa.Text, nullable=False, server_default="{}"),
        sa.Column("started", sa.Float, nullable=False),
        sa.Column("ended", sa.Float, nullable=True),
        sa.Column("samples", sa.Integer, nullable=False, server_default="0"),
        sa.Column("util_sum", sa.Float, nullable=False, server_default="0"),
        sa.Column("util_max", sa.Float, nullable=True),
        sa.Column("last_sample", sa.Float, nullable=True),
        sa.Column("idle_since", sa.Float, nullable=True),
        sa.Column("warned_at", sa.Float, nullable=True),
        sa.Column("keep_until", sa.Float, nullable=True),
        sa.Column("acted", sa.String(16), nullable=True),
    )
    op.create_index("holdings_open", "podbay_holdings", ["ended", "kind"])
    op.create_index("holdings_period", "podbay_holdings", ["started", "ended"])
    op.create_table(
        "podbay_usage_hours",
        sa.Column("holding_id", sa.Integer, sa.ForeignKey("podbay_holdings.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("hour", sa.Integer, primary_key=True),
        sa.Column("samples", sa.Integer, nullable=False, server_default="0"),
        sa.Column("util_sum", sa.Float, nullable=False, server_default="0"),
    )
    op.create_table(
        "podbay_idle_actions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("holding_id", sa.Integer, nullable=True),
        sa.Column("user", sa.String(255), nullable=False, index=True),
        sa.Column("server", sa.String(255), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("profile", sa.String(64), nullable=False),
        sa.Column("at", sa.Float, nullable=False, index=True),
        sa.Column("state", sa.String(16), nullable=False, server_default="started"),
        sa.Column("message", sa.Text, nullable=False, server_default=""),
        sa.Column("options", sa.Text, nullable=False, server_default="{}"),
    )
    op.create_table(
        "podbay_counters",
        sa.Column("key", sa.String(512), primary_key=True),
        sa.Column("value", sa.Float, nullable=False, server_default="0"),
    )
    # What runs now was claimed before holdings were kept: its history starts here. (Table
    # objects, not SQL text: `user` is a reserved word in PostgreSQL.)
    cols = ["key", "kind", "user", "team", "profile", "units_num", "units_den", "gpus", "ref"]
    allocations = sa.table("podbay_allocations", *(sa.column(c) for c in [*cols, "created"]))
    holdings = sa.table("podbay_holdings", *(sa.column(c) for c in [*cols, "started"]))
    op.execute(holdings.insert().from_select(
        [*cols, "started"], sa.select(*(allocations.c[c] for c in cols), allocations.c.created)))
    # With their devices, so that utilisation is matched to them from the first round.
    claims = sa.table("podbay_claims", *(sa.column(c) for c in ("id", "allocation_id", "node", "visible_id")))
    ids = sa.table("podbay_allocations", sa.column("id"), sa.column("key"))
    devices: dict[str, list] = {}
    bind = op.get_bind()
    for key, node, visible in bind.execute(
            sa.select(ids.c.key, claims.c.node, claims.c.visible_id)
            .select_from(claims.join(ids, ids.c.id == claims.c.allocation_id)).order_by(claims.c.id)):
        devices.setdefault(key, []).append([node, visible])
    keyed = sa.table("podbay_holdings", sa.column("key"), sa.column("devices"))
    for key, devs in devices.items():
        bind.execute(keyed.update().where(keyed.c.key == key).values(devices=json.dumps(devs)))


def downgrade() -> None:
    op.drop_table("podbay_counters")
    op.drop_table("podbay_idle_actions")
    op.drop_table("podbay_usage_hours")
    op.drop_table("podbay_holdings")
