"""windows.producer_ns and windows.peak_bytes: what a channel costs the traced code, and its fill

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04

producer_ns: the mean cost in ns per event of the channel's emit in the traced context (in DUAL each
channel's emit timed inside migrator.h on a sample of events; in PERF or RING the program's run time
per event). peak_bytes: the highest occupancy seen in the window (ring: producer minus consumer
position at each drain; perf: the fullest CPU buffer). NULL: not measured.
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: Union[str, Sequence[str], None] = '0005'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Add windows.producer_ns and windows.peak_bytes (NULL for every earlier window)."""
    with op.batch_alter_table('windows') as batch_op:
        batch_op.add_column(sa.Column('producer_ns', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('peak_bytes', sa.BigInteger(), nullable=True))


def downgrade() -> None:
    """Drop windows.producer_ns and windows.peak_bytes."""
    with op.batch_alter_table('windows') as batch_op:
        batch_op.drop_column('peak_bytes')
        batch_op.drop_column('producer_ns')
