"""review_tally: review rows counted per (class, state, edited), kept exact by triggers on `review`,
so progress and the per-class charts read a few dozen rows instead of counting a million.

SQLite (one writer at a time): one row per key, updated in place. PostgreSQL: the triggers only
INSERT signed deltas (+1/-1), so concurrent writers never wait on a shared counter row and cannot
deadlock on one; readers sum per key and fold the deltas now and then (db/tally.py).
"Edited" means what Browse's edit rate means: approved with a caption other than the draft's text.

Revision ID: 0008
Revises: 0007
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# what makes an approved row "edited" (draft texts never change: a regeneration is a new row)
_EDITED = ("({r}.state = 'approved' AND CASE WHEN (SELECT text FROM draft WHERE id = {r}.draft_id) IS NULL "
           "THEN {r}.final_caption IS NOT NULL ELSE COALESCE({r}.final_caption, '') <> "
           "(SELECT text FROM draft WHERE id = {r}.draft_id) END)")
# an update moves a row between keys only when one of these changes (edited only matters if approved)
_MOVES = ("OLD.label {ne} NEW.label OR OLD.state {ne} NEW.state OR "
          "((OLD.final_caption {ne} NEW.final_caption OR OLD.draft_id {ne} NEW.draft_id) "
          "AND (OLD.state = 'approved' OR NEW.state = 'approved'))")


def _sqlite_bump(row: str, delta: str) -> str:
    """Add `delta` to the one row of `row`'s key, or make that row (changes(): rows the UPDATE changed)."""
    edited = _EDITED.format(r=row)
    return (f"UPDATE review_tally SET n = n {delta} WHERE label = {row}.label AND state = {row}.state "
            f"AND edited = {edited}; INSERT INTO review_tally (label, state, edited, n) "
            f"SELECT {row}.label, {row}.state, {edited}, 0 {delta} WHERE changes() = 0;")


SQLITE_TRIGGERS = (
    f"CREATE TRIGGER review_tally_insert AFTER INSERT ON review BEGIN {_sqlite_bump('NEW', '+ 1')} END",
    f"CREATE TRIGGER review_tally_delete AFTER DELETE ON review BEGIN {_sqlite_bump('OLD', '- 1')} END",
    f"CREATE TRIGGER review_tally_update AFTER UPDATE OF label, state, final_caption, draft_id ON review "
    f"WHEN {_MOVES.format(ne='IS NOT')} BEGIN {_sqlite_bump('OLD', '- 1')} {_sqlite_bump('NEW', '+ 1')} END",
)

_PG_EDITED = _EDITED.replace("{r}.state = 'approved'", "{r}.state::text = 'approved'")
PG_FUNCTION = f"""
CREATE FUNCTION review_tally_delta() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP IN ('UPDATE', 'DELETE') THEN
    INSERT INTO review_tally (label, state, edited, n)
    VALUES (OLD.label, OLD.state::text, {_PG_EDITED.format(r='OLD')}, -1);
  END IF;
  IF TG_OP IN ('UPDATE', 'INSERT') THEN
    INSERT INTO review_tally (label, state, edited, n)
    VALUES (NEW.label, NEW.state::text, {_PG_EDITED.format(r='NEW')}, 1);
  END IF;
  RETURN NULL;
END $$
"""
PG_TRIGGERS = (
    "CREATE TRIGGER review_tally_insert AFTER INSERT ON review FOR EACH ROW EXECUTE FUNCTION review_tally_delta()",
    "CREATE TRIGGER review_tally_delete AFTER DELETE ON review FOR EACH ROW EXECUTE FUNCTION review_tally_delta()",
    "CREATE TRIGGER review_tally_update AFTER UPDATE OF label, state, final_caption, draft_id ON review "
    f"FOR EACH ROW WHEN ({_MOVES.format(ne='IS DISTINCT FROM')}) "
    "EXECUTE FUNCTION review_tally_delta()",
)
TRIGGER_NAMES = ("review_tally_insert", "review_tally_delete", "review_tally_update")


def upgrade() -> None:
    op.create_table(
        "review_tally",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("label", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("state", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("edited", sa.Boolean(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_review_tally_key", "review_tally", ["label", "state", "edited"], unique=False)
    postgres = op.get_bind().dialect.name == "postgresql"
    edited = (_PG_EDITED if postgres else _EDITED).format(r="review")
    state = "review.state::text" if postgres else "review.state"
    # the rows already stored, counted once (in this transaction: nothing moves meanwhile)
    op.execute(f"INSERT INTO review_tally (label, state, edited, n) SELECT label, st, ed, COUNT(*) FROM "
               f"(SELECT label, {state} AS st, {edited} AS ed FROM review) AS r GROUP BY label, st, ed")
    if postgres:
        op.execute(PG_FUNCTION)
        for ddl in PG_TRIGGERS:
            op.execute(ddl)
    else:
        for ddl in SQLITE_TRIGGERS:
            op.execute(ddl)


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for name in TRIGGER_NAMES:
        op.execute(f"DROP TRIGGER IF EXISTS {name} ON review" if postgres else f"DROP TRIGGER IF EXISTS {name}")
    if postgres:
        op.execute("DROP FUNCTION IF EXISTS review_tally_delta()")
    op.drop_index("ix_review_tally_key", table_name="review_tally")
    op.drop_table("review_tally")
