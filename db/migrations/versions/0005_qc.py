"""quality control: qc_policy (the curator's routing policy), second_opinion (blind second
reviews and their adjudication), and the review action `adjudicate`

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


# the type exists since 0001: PostgreSQL must not create it again
REJECT_REASON = postgresql.ENUM("wrong_object", "hallucination", "too_vague", "unreadable_image", "refusal", "other",
                                name="rejectreason", create_type=False)
NEW_TYPES = ("routereason", "opinionstate", "verdict", "adjudication")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TYPE reviewaction ADD VALUE IF NOT EXISTS 'adjudicate'")
    op.create_table('qc_policy',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('sample_fraction', sa.Float(), nullable=False),
    sa.Column('route_edited', sa.Boolean(), nullable=False),
    sa.Column('updated_by', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('updated_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('second_opinion',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('image_id', sa.Integer(), nullable=False),
    sa.Column('draft_id', sa.Integer(), nullable=True),
    sa.Column('routed_because', sa.Enum('sample', 'edited', name='routereason'), nullable=False),
    sa.Column('state', sa.Enum('waiting', 'agreed', 'disputed', 'adjudicated', name='opinionstate'), nullable=False),
    sa.Column('first_reviewer', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('first_verdict', sa.Enum('approve', 'edit', 'reject', name='verdict'), nullable=False),
    sa.Column('first_caption', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('first_reason', REJECT_REASON, nullable=True),
    sa.Column('first_decided_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.Column('second_reviewer', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('second_verdict', sa.Enum('approve', 'edit', 'reject', name='verdict'), nullable=True),
    sa.Column('second_caption', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('second_reason', REJECT_REASON, nullable=True),
    sa.Column('second_note', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('second_decided_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.Column('claimed_by', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('claim_expires_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.Column('adjudicator', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('adjudication', sa.Enum('first', 'second', 'merged', 'rejected', name='adjudication'), nullable=True),
    sa.Column('adjudicated_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('updated_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['draft_id'], ['draft.id'], ),
    sa.ForeignKeyConstraint(['image_id'], ['image.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('image_id')
    )
    with op.batch_alter_table('second_opinion', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_second_opinion_first_reviewer'), ['first_reviewer'], unique=False)
        batch_op.create_index('ix_second_opinion_queue', ['state', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_second_opinion_second_reviewer'), ['second_reviewer'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('second_opinion', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_second_opinion_second_reviewer'))
        batch_op.drop_index('ix_second_opinion_queue')
        batch_op.drop_index(batch_op.f('ix_second_opinion_first_reviewer'))

    op.drop_table('second_opinion')
    op.drop_table('qc_policy')
    if op.get_bind().dialect.name == "postgresql":
        for name in NEW_TYPES:  # ('adjudicate' stays in reviewaction: PostgreSQL cannot drop an enum value)
            op.execute(f"DROP TYPE IF EXISTS {name}")
