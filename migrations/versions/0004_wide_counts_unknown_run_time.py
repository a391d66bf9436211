"""64-bit window counts and indexes; run time may be unknown

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25

Window indexes on the shared clock are unix time / window_seconds (3.6e9 with 0.5 s windows), and a
one-hour window at a million events per second counts 3.6e9 attempts: past a 32-bit INTEGER on
PostgreSQL (SQLite's are 64-bit already). bpf_run_ns / bpf_run_cnt become nullable: NULL when the
kernel refused run-time statistics, which is unknown, not zero.
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: Union[str, Sequence[str], None] = '0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

WINDOW_COUNTS = ('index', 'attempts', 'delivered', 'dropped_full', 'dropped_other', 'lost', 'parse_errors',
                 'payload_mismatches', 'in_flight', 'inversions', 'residual')


def upgrade() -> None:
    """Widen the columns; let run time be NULL."""
    with op.batch_alter_table('windows') as batch_op:
        for col in WINDOW_COUNTS:
            batch_op.alter_column(col, existing_type=sa.Integer(), type_=sa.BigInteger(),
                                  existing_nullable=False)
        for col in ('bpf_run_ns', 'bpf_run_cnt'):
            batch_op.alter_column(col, existing_type=sa.Integer(), type_=sa.BigInteger(), nullable=True,
                                  existing_nullable=False)
    with op.batch_alter_table('verdicts') as batch_op:
        batch_op.alter_column('index', existing_type=sa.Integer(), type_=sa.BigInteger(), existing_nullable=False)
    with op.batch_alter_table('migrations') as batch_op:
        batch_op.alter_column('judged_index', existing_type=sa.Integer(), type_=sa.BigInteger(),
                              existing_nullable=False)


def downgrade() -> None:
    """Back to 32 bits (unknown run time reads as 0)."""
    op.execute("UPDATE windows SET bpf_run_ns = 0 WHERE bpf_run_ns IS NULL")
    op.execute("UPDATE windows SET bpf_run_cnt = 0 WHERE bpf_run_cnt IS NULL")
    with op.batch_alter_table('migrations') as batch_op:
        batch_op.alter_column('judged_index', existing_type=sa.BigInteger(), type_=sa.Integer(),
                              existing_nullable=False)
    with op.batch_alter_table('verdicts') as batch_op:
        batch_op.alter_column('index', existing_type=sa.BigInteger(), type_=sa.Integer(), existing_nullable=False)
    with op.batch_alter_table('windows') as batch_op:
        for col in ('bpf_run_ns', 'bpf_run_cnt'):
            batch_op.alter_column(col, existing_type=sa.BigInteger(), type_=sa.Integer(), nullable=False,
                                  existing_nullable=True)
        for col in WINDOW_COUNTS:
            batch_op.alter_column(col, existing_type=sa.BigInteger(), type_=sa.Integer(), existing_nullable=False)
