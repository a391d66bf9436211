"""the notifier's outbox: one row per transition and webhook

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: Union[str, Sequence[str], None] = '0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Add the notifications table."""
    op.create_table('notifications',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('migration_id', sa.Integer(), nullable=False),
    sa.Column('transition_id', sa.Integer(), nullable=False),
    sa.Column('target', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('done_at', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['migration_id'], ['migrations.id'], name=op.f('fk_notifications_migration_id_migrations'),
                            ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['transition_id'], ['transitions.id'],
                            name=op.f('fk_notifications_transition_id_transitions'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_notifications')),
    sa.UniqueConstraint('transition_id', 'target', name=op.f('uq_notifications_transition_id_target'))
    )
    op.create_index('ix_notifications_migration_id_target_transition_id', 'notifications',
                    ['migration_id', 'target', 'transition_id'], unique=False)


def downgrade() -> None:
    """Drop it again."""
    op.drop_index('ix_notifications_migration_id_target_transition_id', table_name='notifications')
    op.drop_table('notifications')
