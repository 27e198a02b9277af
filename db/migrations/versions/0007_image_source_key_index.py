"""image: index on source_key, so a resumed or repeated import skips the files it already stored
without reading them.

Revision ID: 0007
Revises: 0006
"""
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_image_source_key", "image", ["source_key"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_image_source_key", table_name="image")
