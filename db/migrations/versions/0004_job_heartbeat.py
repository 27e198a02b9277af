"""job heartbeat: the worker's host and last heartbeat, and the `interrupted` status

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

STATUSES = ("queued", "running", "done", "failed", "cancelled")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():  # ADD VALUE cannot run inside a transaction block
            op.execute("ALTER TYPE jobstatus ADD VALUE IF NOT EXISTS 'interrupted'")
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.add_column(sa.Column("host", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch_op.add_column(sa.Column("heartbeat_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
        if op.get_bind().dialect.name != "postgresql":  # SQLite: the VARCHAR grows to fit 'interrupted'
            batch_op.alter_column("status", existing_type=sa.Enum(*STATUSES, name="jobstatus"),
                                  type_=sa.Enum(*STATUSES, "interrupted", name="jobstatus"), existing_nullable=False)


def downgrade() -> None:
    op.execute("UPDATE job SET status = 'failed' WHERE status = 'interrupted'")
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.drop_column("heartbeat_at")
        batch_op.drop_column("host")
        if op.get_bind().dialect.name != "postgresql":
            batch_op.alter_column("status", existing_type=sa.Enum(*STATUSES, "interrupted", name="jobstatus"),
                                  type_=sa.Enum(*STATUSES, name="jobstatus"), existing_nullable=False)
