"""Async jobs: Zhipu's ``/async/chat/completions`` jobs stored, so that every process
serving the database answers ``/async-result/{id}`` and a restart keeps them; each names
the instance that runs it, so that the recovery of a dead instance fails its jobs
(store/async_jobs.py).

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "async_jobs",
        sa.Column("id", sa.String(40), primary_key=True),  # its generation's request id
        sa.Column("org_id", sa.String(40), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("client_request_id", sa.String(200), nullable=True),
        sa.Column("status", sa.String(12), nullable=False),  # PROCESSING | SUCCESS | FAIL
        sa.Column("result", sa.Text, nullable=True),  # JSON, once finished
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
        sa.Column("instance_id", sa.String(26), nullable=False),  # the process that runs it
    )
    op.create_index("ix_async_jobs_status_instance", "async_jobs", ["status", "instance_id"])


def downgrade() -> None:
    op.drop_index("ix_async_jobs_status_instance", table_name="async_jobs")
    op.drop_table("async_jobs")
