"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2025-11-25

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0001'
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""

    op.create_table('migrations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('config_json', sa.Text(), nullable=False),
    sa.Column('config_hash', sa.String(length=64), nullable=False),
    sa.Column('config_path', sa.Text(), nullable=False),
    sa.Column('schema_fingerprint', sa.String(length=200), nullable=True),
    sa.Column('reported_fingerprint', sa.String(length=200), nullable=True),
    sa.Column('phase', sa.String(length=32), nullable=False),
    sa.Column('slice', sa.Integer(), nullable=False),
    sa.Column('phase_since', sa.Float(), nullable=False),
    sa.Column('paused_phase', sa.String(length=32), nullable=True),
    sa.Column('paused_slice', sa.Integer(), nullable=True),
    sa.Column('pending_transition_id', sa.Integer(), nullable=True),
    sa.Column('streak', sa.Integer(), nullable=False),
    sa.Column('streak_window_ids', sa.Text(), nullable=False),
    sa.Column('clean_windows', sa.Integer(), nullable=False),
    sa.Column('judged_index', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_migrations'))
    )
    op.create_table('hosts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('migration_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('slice', sa.Integer(), nullable=False),
    sa.Column('desired_mode', sa.String(length=8), nullable=False),
    sa.Column('applied_mode', sa.String(length=8), nullable=True),
    sa.Column('applied_at', sa.Float(), nullable=True),
    sa.Column('last_heartbeat', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['migration_id'], ['migrations.id'], name=op.f('fk_hosts_migration_id_migrations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_hosts')),
    sa.UniqueConstraint('migration_id', 'name', name=op.f('uq_hosts_migration_id_name'))
    )
    op.create_table('leases',
    sa.Column('migration_id', sa.Integer(), nullable=False),
    sa.Column('holder', sa.String(length=200), nullable=False),
    sa.Column('acquired_at', sa.Float(), nullable=False),
    sa.Column('expires_at', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['migration_id'], ['migrations.id'], name=op.f('fk_leases_migration_id_migrations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('migration_id', name=op.f('pk_leases'))
    )
    op.create_table('slices',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('migration_id', sa.Integer(), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('spec', sa.String(length=200), nullable=False),
    sa.Column('host_count', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['migration_id'], ['migrations.id'], name=op.f('fk_slices_migration_id_migrations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_slices')),
    sa.UniqueConstraint('migration_id', 'number', name=op.f('uq_slices_migration_id_number'))
    )
    op.create_table('transitions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('migration_id', sa.Integer(), nullable=False),
    sa.Column('from_phase', sa.String(length=32), nullable=False),
    sa.Column('from_slice', sa.Integer(), nullable=False),
    sa.Column('to_phase', sa.String(length=32), nullable=False),
    sa.Column('to_slice', sa.Integer(), nullable=False),
    sa.Column('actor', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('window_ids', sa.Text(), nullable=False),
    sa.Column('evidence', sa.Text(), nullable=False),
    sa.Column('modes', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('confirmed_at', sa.Float(), nullable=True),
    sa.Column('holder', sa.String(length=200), nullable=False),
    sa.ForeignKeyConstraint(['migration_id'], ['migrations.id'], name=op.f('fk_transitions_migration_id_migrations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_transitions'))
    )
    with op.batch_alter_table('transitions', schema=None) as batch_op:
        batch_op.create_index('ix_transitions_migration_id_id', ['migration_id', 'id'], unique=False)

    op.create_table('windows',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('migration_id', sa.Integer(), nullable=False),
    sa.Column('phase', sa.String(length=32), nullable=False),
    sa.Column('slice', sa.Integer(), nullable=False),
    sa.Column('recorded_at', sa.Float(), nullable=False),
    sa.Column('host', sa.String(length=200), nullable=False),
    sa.Column('channel', sa.String(length=8), nullable=False),
    sa.Column('index', sa.Integer(), nullable=False),
    sa.Column('start', sa.Float(), nullable=False),
    sa.Column('end', sa.Float(), nullable=False),
    sa.Column('mode', sa.String(length=8), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('delivered', sa.Integer(), nullable=False),
    sa.Column('dropped_full', sa.Integer(), nullable=False),
    sa.Column('dropped_other', sa.Integer(), nullable=False),
    sa.Column('lost', sa.Integer(), nullable=False),
    sa.Column('parse_errors', sa.Integer(), nullable=False),
    sa.Column('in_flight', sa.Integer(), nullable=False),
    sa.Column('lag_p50_ms', sa.Float(), nullable=True),
    sa.Column('lag_p99_ms', sa.Float(), nullable=True),
    sa.Column('lag_max_ms', sa.Float(), nullable=True),
    sa.Column('inversions', sa.Integer(), nullable=False),
    sa.Column('consumer_cpu_s', sa.Float(), nullable=False),
    sa.Column('bpf_run_ns', sa.Integer(), nullable=False),
    sa.Column('bpf_run_cnt', sa.Integer(), nullable=False),
    sa.Column('residual', sa.Integer(), nullable=False),
    sa.Column('settled', sa.Boolean(), nullable=False),
    sa.Column('loss_rate', sa.Float(), nullable=False),
    sa.Column('extra', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['migration_id'], ['migrations.id'], name=op.f('fk_windows_migration_id_migrations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_windows')),
    sa.UniqueConstraint('migration_id', 'host', 'channel', 'index', name=op.f('uq_windows_migration_id_host_channel_index'))
    )
    with op.batch_alter_table('windows', schema=None) as batch_op:
        batch_op.create_index('ix_windows_migration_id_host_id', ['migration_id', 'host', 'id'], unique=False)
        batch_op.create_index('ix_windows_migration_id_id', ['migration_id', 'id'], unique=False)
        batch_op.create_index('ix_windows_migration_id_index', ['migration_id', 'index'], unique=False)
        batch_op.create_index('ix_windows_migration_id_phase_id', ['migration_id', 'phase', 'id'], unique=False)

    op.create_table('verdicts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('migration_id', sa.Integer(), nullable=False),
    sa.Column('window_id', sa.Integer(), nullable=True),
    sa.Column('scope', sa.String(length=8), nullable=False),
    sa.Column('host', sa.String(length=200), nullable=True),
    sa.Column('index', sa.Integer(), nullable=False),
    sa.Column('phase', sa.String(length=32), nullable=False),
    sa.Column('slice', sa.Integer(), nullable=False),
    sa.Column('verdict', sa.String(length=8), nullable=False),
    sa.Column('rule', sa.String(length=64), nullable=False),
    sa.Column('values', sa.Text(), nullable=False),
    sa.Column('streak', sa.Integer(), nullable=False),
    sa.Column('decided_at', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['migration_id'], ['migrations.id'], name=op.f('fk_verdicts_migration_id_migrations'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['window_id'], ['windows.id'], name=op.f('fk_verdicts_window_id_windows'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_verdicts'))
    )
    with op.batch_alter_table('verdicts', schema=None) as batch_op:
        batch_op.create_index('ix_verdicts_migration_id_scope_id', ['migration_id', 'scope', 'id'], unique=False)
        batch_op.create_index('ix_verdicts_window_id', ['window_id'], unique=False)




def downgrade() -> None:
    """Downgrade schema."""

    with op.batch_alter_table('verdicts', schema=None) as batch_op:
        batch_op.drop_index('ix_verdicts_window_id')
        batch_op.drop_index('ix_verdicts_migration_id_scope_id')

    op.drop_table('verdicts')
    with op.batch_alter_table('windows', schema=None) as batch_op:
        batch_op.drop_index('ix_windows_migration_id_phase_id')
        batch_op.drop_index('ix_windows_migration_id_index')
        batch_op.drop_index('ix_windows_migration_id_id')
        batch_op.drop_index('ix_windows_migration_id_host_id')

    op.drop_table('windows')
    with op.batch_alter_table('transitions', schema=None) as batch_op:
        batch_op.drop_index('ix_transitions_migration_id_id')

    op.drop_table('transitions')
    op.drop_table('slices')
    op.drop_table('leases')
    op.drop_table('hosts')
    op.drop_table('migrations')

