"""the operator's program hash per migration, payload mismatches per window

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: Union[str, Sequence[str], None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Add migrations.source_hash and windows.payload_mismatches."""
    with op.batch_alter_table('migrations') as batch_op:
        batch_op.add_column(sa.Column('source_hash', sa.String(length=64), nullable=True))
    with op.batch_alter_table('windows') as batch_op:
        batch_op.add_column(sa.Column('payload_mismatches', sa.Integer(), nullable=False, server_default='0'))


def downgrade() -> None:
    """Drop them again."""
    with op.batch_alter_table('windows') as batch_op:
        batch_op.drop_column('payload_mismatches')
    with op.batch_alter_table('migrations') as batch_op:
        batch_op.drop_column('source_hash')
