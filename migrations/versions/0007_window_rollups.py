"""window_rollups: what `migrator prune` keeps of the windows of finished migrations it deletes

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05

One row per (migration, host, channel, phase, slice): index and time span, summed counts, worst
lag p99 and the host verdicts of the windows rolled up into it (store/retention.py).
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: Union[str, Sequence[str], None] = '0006'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

_COUNTS = ('windows', 'attempts', 'delivered', 'dropped_full', 'dropped_other', 'lost', 'filled_from_ring',
           'parse_errors', 'payload_mismatches', 'inversions', 'residual', 'unsettled')


def upgrade() -> None:
    """Create window_rollups."""
    op.create_table(
        'window_rollups',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('migration_id', sa.Integer(), nullable=False),
        sa.Column('host', sa.String(length=200), nullable=False),
        sa.Column('channel', sa.String(length=8), nullable=False),
        sa.Column('phase', sa.String(length=32), nullable=False),
        sa.Column('slice', sa.Integer(), nullable=False),
        sa.Column('first_index', sa.BigInteger(), nullable=False),
        sa.Column('last_index', sa.BigInteger(), nullable=False),
        sa.Column('first_start', sa.Float(), nullable=False),
        sa.Column('last_end', sa.Float(), nullable=False),
        *(sa.Column(c, sa.BigInteger(), nullable=False) for c in _COUNTS),
        sa.Column('consumer_cpu_s', sa.Float(), nullable=False),
        sa.Column('lag_p99_max_ms', sa.Float(), nullable=True),
        sa.Column('lag_max_ms', sa.Float(), nullable=True),
        sa.Column('passes', sa.BigInteger(), nullable=False),
        sa.Column('breaches', sa.BigInteger(), nullable=False),
        sa.Column('no_data', sa.BigInteger(), nullable=False),
        sa.Column('pruned_at', sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(['migration_id'], ['migrations.id'], ondelete='CASCADE',
                                name=op.f('fk_window_rollups_migration_id_migrations')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_window_rollups')),
        sa.UniqueConstraint('migration_id', 'host', 'channel', 'phase', 'slice',
                            name=op.f('uq_window_rollups_migration_id_host_channel_phase_slice')),
    )


def downgrade() -> None:
    """Drop window_rollups (the windows it summarised are gone: a downgrade loses their summary)."""
    op.drop_table('window_rollups')
