"""SQLAlchemy 2 models of the migration record: migrations, slices, hosts, transitions, windows, verdicts, leases.

Timestamps are unix seconds (float) so that agents, controller and tests share one clock type and
SQLite and PostgreSQL store them identically. JSON-ish payloads are stored as JSON text for the same
reason (and because the history must be readable with a plain `sqlite3` shell).
"""
from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Named constraints let alembic's batch mode (SQLite) find and recreate them deterministically.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base of every table; its MetaData names constraints for SQLite batch mode."""
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Migration(Base):
    """One migration run: its config snapshot, schema fingerprint and the live phase state."""

    __tablename__ = "migrations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[float] = mapped_column(Float)
    config_json: Mapped[str] = mapped_column(Text)
    config_hash: Mapped[str] = mapped_column(String(64))
    # sha256 of the operator's program as it will be loaded: source, cflags and migrator.h.
    source_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    config_path: Mapped[str] = mapped_column(Text, default="")
    schema_fingerprint: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # A different fingerprint reported by an agent (or the API) after the freeze; blocks advancing.
    reported_fingerprint: Mapped[str | None] = mapped_column(String(200), nullable=True)
    phase: Mapped[str] = mapped_column(String(32))
    slice: Mapped[int] = mapped_column(Integer, default=0)  # canary slice 1..K, 0 outside CANARY
    phase_since: Mapped[float] = mapped_column(Float)  # confirm time of the transition into `phase`
    paused_phase: Mapped[str | None] = mapped_column(String(32), nullable=True)
    paused_slice: Mapped[int | None] = mapped_column(Integer, nullable=True)
    pending_transition_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Streak state of the current phase/slice, derived from verdicts but kept here so `status` is O(1).
    streak: Mapped[int] = mapped_column(Integer, default=0)
    streak_window_ids: Mapped[str] = mapped_column(Text, default="[]")
    clean_windows: Mapped[int] = mapped_column(Integer, default=0)
    judged_index: Mapped[int] = mapped_column(BigInteger, default=-1)


class Slice(Base):
    """Canary slice k: the cumulative number of hosts on RING during CANARY slice k."""

    __tablename__ = "slices"
    __table_args__ = (UniqueConstraint("migration_id", "number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    migration_id: Mapped[int] = mapped_column(ForeignKey("migrations.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    spec: Mapped[str] = mapped_column(String(200))  # as written in canary.toml
    host_count: Mapped[int] = mapped_column(Integer)


class Host(Base):
    """A host of a migration: desired mode written by the controller, applied mode by its agent."""

    __tablename__ = "hosts"
    __table_args__ = (UniqueConstraint("migration_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    migration_id: Mapped[int] = mapped_column(ForeignKey("migrations.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    position: Mapped[int] = mapped_column(Integer)  # order in the host list
    slice: Mapped[int] = mapped_column(Integer)  # first canary slice that moves this host to RING
    desired_mode: Mapped[str] = mapped_column(String(8), default="PERF")
    applied_mode: Mapped[str | None] = mapped_column(String(8), nullable=True)
    applied_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_heartbeat: Mapped[float | None] = mapped_column(Float, nullable=True)


class Transition(Base):
    """Append-only phase history. Written as an intent, then confirmed once (status, confirmed_at)."""

    __tablename__ = "transitions"
    __table_args__ = (Index("ix_transitions_migration_id_id", "migration_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    migration_id: Mapped[int] = mapped_column(ForeignKey("migrations.id", ondelete="CASCADE"))
    from_phase: Mapped[str] = mapped_column(String(32))
    from_slice: Mapped[int] = mapped_column(Integer, default=0)
    to_phase: Mapped[str] = mapped_column(String(32))
    to_slice: Mapped[int] = mapped_column(Integer, default=0)
    actor: Mapped[str] = mapped_column(String(16))  # auto | manual
    reason: Mapped[str] = mapped_column(Text, default="")
    window_ids: Mapped[str] = mapped_column(Text, default="[]")  # the windows that triggered it
    evidence: Mapped[str] = mapped_column(Text, default="{}")
    modes: Mapped[str] = mapped_column(Text, default="{}")  # desired mode per host to apply
    status: Mapped[str] = mapped_column(String(16))  # intent | confirmed
    created_at: Mapped[float] = mapped_column(Float)
    confirmed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    holder: Mapped[str] = mapped_column(String(200), default="")
    # Per host at confirmation (store/hostlease.py): {host: {"mode", "status": applied | sent | lost,
    # "last_report"}}; a lost host is recorded as lost, never as confirmed. NULL: written before 0008.
    host_status: Mapped[str | None] = mapped_column(Text, nullable=True)


class Window(Base):
    """One ChannelWindow of one host, as the data plane measured it, plus the phase it fell in."""

    __tablename__ = "windows"
    __table_args__ = (
        UniqueConstraint("migration_id", "host", "channel", "index"),
        # `windows --last N` and the controller's "new windows" scan.
        Index("ix_windows_migration_id_id", "migration_id", "id"),
        Index("ix_windows_migration_id_host_id", "migration_id", "host", "id"),
        Index("ix_windows_migration_id_phase_id", "migration_id", "phase", "id"),
        Index("ix_windows_migration_id_index", "migration_id", "index"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    migration_id: Mapped[int] = mapped_column(ForeignKey("migrations.id", ondelete="CASCADE"))
    phase: Mapped[str] = mapped_column(String(32))
    slice: Mapped[int] = mapped_column(Integer, default=0)
    recorded_at: Mapped[float] = mapped_column(Float)
    host: Mapped[str] = mapped_column(String(200))
    channel: Mapped[str] = mapped_column(String(8))
    index: Mapped[int] = mapped_column(BigInteger)
    start: Mapped[float] = mapped_column(Float)
    end: Mapped[float] = mapped_column(Float)
    mode: Mapped[str] = mapped_column(String(8))
    attempts: Mapped[int] = mapped_column(BigInteger, default=0)
    delivered: Mapped[int] = mapped_column(BigInteger, default=0)
    dropped_full: Mapped[int] = mapped_column(BigInteger, default=0)
    dropped_other: Mapped[int] = mapped_column(BigInteger, default=0)
    lost: Mapped[int] = mapped_column(BigInteger, default=0)
    parse_errors: Mapped[int] = mapped_column(BigInteger, default=0)
    # SHADOW: records whose ring payload differs from the perf payload of the same seq.
    payload_mismatches: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # perf rows, DUAL: records perf lost that the operator got from their ring copy instead.
    filled_from_ring: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # What the channel's emit costs the traced code, ns per event; its fullest buffer, bytes. NULL: not measured.
    producer_ns: Mapped[float | None] = mapped_column(Float, nullable=True)
    peak_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    in_flight: Mapped[int] = mapped_column(BigInteger, default=0)
    lag_p50_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    lag_p99_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    lag_max_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    inversions: Mapped[int] = mapped_column(BigInteger, default=0)
    consumer_cpu_s: Mapped[float] = mapped_column(Float, default=0.0)
    # None: the kernel refused run-time statistics (unknown, never a silent 0).
    bpf_run_ns: Mapped[int | None] = mapped_column(BigInteger, nullable=True, default=0)
    bpf_run_cnt: Mapped[int | None] = mapped_column(BigInteger, nullable=True, default=0)
    residual: Mapped[int] = mapped_column(BigInteger, default=0)
    settled: Mapped[bool] = mapped_column(Boolean, default=True)
    loss_rate: Mapped[float] = mapped_column(Float, default=0.0)
    extra: Mapped[str] = mapped_column(Text, default="{}")


class Verdict(Base):
    """A judgement: scope 'host' for one host window, 'slice' for the whole judged group of an index."""

    __tablename__ = "verdicts"
    __table_args__ = (
        Index("ix_verdicts_window_id", "window_id"),
        Index("ix_verdicts_migration_id_scope_id", "migration_id", "scope", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    migration_id: Mapped[int] = mapped_column(ForeignKey("migrations.id", ondelete="CASCADE"))
    window_id: Mapped[int | None] = mapped_column(
        ForeignKey("windows.id", ondelete="CASCADE"), nullable=True
    )
    scope: Mapped[str] = mapped_column(String(8))  # host | slice
    host: Mapped[str | None] = mapped_column(String(200), nullable=True)
    index: Mapped[int] = mapped_column(BigInteger)
    phase: Mapped[str] = mapped_column(String(32))
    slice: Mapped[int] = mapped_column(Integer, default=0)
    verdict: Mapped[str] = mapped_column(String(8))  # pass | breach | no-data
    rule: Mapped[str] = mapped_column(String(64))
    values: Mapped[str] = mapped_column(Text, default="{}")
    streak: Mapped[int] = mapped_column(Integer, default=0)  # streak after this (slice scope)
    decided_at: Mapped[float] = mapped_column(Float)


class Lease(Base):
    """Which controller drives a migration, until when. Renewed by the loop; expiry frees it."""

    __tablename__ = "leases"

    migration_id: Mapped[int] = mapped_column(
        ForeignKey("migrations.id", ondelete="CASCADE"), primary_key=True
    )
    holder: Mapped[str] = mapped_column(String(200))
    acquired_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)


class HostLease(Base):
    """Which process serves a host (agent, library attach or wrap), until when: one per host name.
    Taken when its database link is made, renewed with its heartbeat, released when it stops."""

    __tablename__ = "host_leases"

    host: Mapped[str] = mapped_column(String(200), primary_key=True)
    migration_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    holder: Mapped[str] = mapped_column(String(200))  # machine:pid:process start time
    acquired_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)


class Notification(Base):
    """One transition posted to one webhook (control/notify.py): the notifier's outbox and its audit.

    A row is claimed ("sending") before the post, so a transition goes to a webhook at most once
    per row even with two notifiers; `target` is a digest of the URL (a webhook URL is a secret).
    """

    __tablename__ = "notifications"
    __table_args__ = (
        UniqueConstraint("transition_id", "target"),
        Index("ix_notifications_migration_id_target_transition_id", "migration_id", "target", "transition_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    migration_id: Mapped[int] = mapped_column(ForeignKey("migrations.id", ondelete="CASCADE"))
    transition_id: Mapped[int] = mapped_column(ForeignKey("transitions.id", ondelete="CASCADE"))
    target: Mapped[str] = mapped_column(String(64))  # sha256 of the webhook URL, hex
    status: Mapped[str] = mapped_column(String(16))  # sending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[float] = mapped_column(Float)
    done_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class WindowRollup(Base):
    """What `migrator prune` (store/retention.py) keeps of the windows it deletes: per migration, host,
    channel and phase position, their index and time span, summed counts, worst lag and the host
    verdicts they got. Windows named by a transition (its deciding windows) are never rolled up:
    they stay in `windows`, so every id `history` prints still resolves."""

    __tablename__ = "window_rollups"
    __table_args__ = (UniqueConstraint("migration_id", "host", "channel", "phase", "slice"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    migration_id: Mapped[int] = mapped_column(ForeignKey("migrations.id", ondelete="CASCADE"))
    host: Mapped[str] = mapped_column(String(200))
    channel: Mapped[str] = mapped_column(String(8))
    phase: Mapped[str] = mapped_column(String(32))
    slice: Mapped[int] = mapped_column(Integer, default=0)
    first_index: Mapped[int] = mapped_column(BigInteger)
    last_index: Mapped[int] = mapped_column(BigInteger)
    first_start: Mapped[float] = mapped_column(Float)
    last_end: Mapped[float] = mapped_column(Float)
    windows: Mapped[int] = mapped_column(BigInteger, default=0)  # windows rolled up into this row
    attempts: Mapped[int] = mapped_column(BigInteger, default=0)
    delivered: Mapped[int] = mapped_column(BigInteger, default=0)
    dropped_full: Mapped[int] = mapped_column(BigInteger, default=0)
    dropped_other: Mapped[int] = mapped_column(BigInteger, default=0)
    lost: Mapped[int] = mapped_column(BigInteger, default=0)
    filled_from_ring: Mapped[int] = mapped_column(BigInteger, default=0)
    parse_errors: Mapped[int] = mapped_column(BigInteger, default=0)
    payload_mismatches: Mapped[int] = mapped_column(BigInteger, default=0)
    inversions: Mapped[int] = mapped_column(BigInteger, default=0)
    residual: Mapped[int] = mapped_column(BigInteger, default=0)  # summed books residual of settled windows
    unsettled: Mapped[int] = mapped_column(BigInteger, default=0)  # windows whose books were not closed
    consumer_cpu_s: Mapped[float] = mapped_column(Float, default=0.0)
    lag_p99_max_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    lag_max_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    # The host verdicts of these windows (ring windows carry them): what the controller decided on.
    passes: Mapped[int] = mapped_column(BigInteger, default=0)
    breaches: Mapped[int] = mapped_column(BigInteger, default=0)
    no_data: Mapped[int] = mapped_column(BigInteger, default=0)
    pruned_at: Mapped[float] = mapped_column(Float)
