"""windows.filled_from_ring: records perf lost that the operator got from the ring instead

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04

In DUAL every record is on both channels; when perf refuses one, the reader delivers its ring copy
in perf's place. The perf row of a window counts those records, beside perf's own loss (`lost`).
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: Union[str, Sequence[str], None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Add windows.filled_from_ring (0 for every earlier window)."""
    with op.batch_alter_table('windows') as batch_op:
        batch_op.add_column(sa.Column('filled_from_ring', sa.BigInteger(), nullable=False, server_default='0'))


def downgrade() -> None:
    """Drop windows.filled_from_ring."""
    with op.batch_alter_table('windows') as batch_op:
        batch_op.drop_column('filled_from_ring')
