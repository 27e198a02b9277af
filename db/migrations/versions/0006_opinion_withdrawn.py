"""second opinions: the state `withdrawn` (the item went back to review while its second opinion was
open). SQLite stores the enum as a VARCHAR already wide enough; PostgreSQL's type gets the value.

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
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():  # ADD VALUE cannot run inside a transaction block
            op.execute("ALTER TYPE opinionstate ADD VALUE IF NOT EXISTS 'withdrawn'")


def downgrade() -> None:
    # the schema before 0006 deleted a second opinion whose item went back to review; do the same
    # (the value stays in PostgreSQL's type: PostgreSQL cannot drop an enum value)
    op.execute(sa.text("DELETE FROM second_opinion WHERE state = 'withdrawn'"))
