"""host_leases and transitions.host_status: one process per host; honest per-host confirmation

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-12

host_leases: which process (machine:pid:start time) serves a host name, until when (agent, library
attach and wrap take it through their database link). transitions.host_status: per host, what the
transition found at confirmation (applied, sent, lost), so a dead host is never "confirmed".
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0008'
down_revision: Union[str, Sequence[str], None] = '0007'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Create host_leases; add transitions.host_status."""
    op.create_table(
        'host_leases',
        sa.Column('host', sa.String(length=200), nullable=False),
        sa.Column('migration_id', sa.Integer(), nullable=True),
        sa.Column('holder', sa.String(length=200), nullable=False),
        sa.Column('acquired_at', sa.Float(), nullable=False),
        sa.Column('expires_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('host', name=op.f('pk_host_leases')),
    )
    with op.batch_alter_table('transitions') as batch:
        batch.add_column(sa.Column('host_status', sa.Text(), nullable=True))


def downgrade() -> None:
    """Drop them (a downgrade forgets who serves which host and the per-host outcomes)."""
    with op.batch_alter_table('transitions') as batch:
        batch.drop_column('host_status')
    op.drop_table('host_leases')
