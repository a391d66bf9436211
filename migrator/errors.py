"""One exception family: the CLI catches MigratorError in one place and prints its message."""
from __future__ import annotations

import difflib
from collections.abc import Iterable


def close_matches(word: str, choices: Iterable[str], n: int = 1) -> list[str]:
    """The (at most n) choices closest to a mistyped `word`, best first, for a "did you mean" hint."""
    return difflib.get_close_matches(word, list(choices), n=n, cutoff=0.6)


class MigratorError(Exception):
    """Base of every error an operator is meant to read. exit_code is what the CLI returns."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(MigratorError):
    """A canary.toml (or option) value is wrong: names the file, the field and the fix."""

    def __init__(self, path: str, field: str, problem: str, fix: str = "") -> None:
        self.path, self.field, self.problem, self.fix = path, field, problem, fix
        msg = f"{path}: {field}: {problem}" if field else f"{path}: {problem}"  # no field: the file itself
        if fix:
            msg += f" (fix: {fix})"
        super().__init__(msg)


class BPFLoadError(MigratorError):
    """A BPF program failed to compile, load or attach."""

    def __init__(self, probe: str, reason: str) -> None:
        self.probe, self.reason = probe, reason
        super().__init__(f"Failed to load probe {probe!r}: {reason}")


class AttachError(MigratorError):
    """A program could not be attached to a network device (tc), optionally in a namespace."""

    def __init__(self, device: str, netns: str | None, problem: str, fix: str) -> None:
        self.device, self.netns, self.problem, self.fix = device, netns, problem, fix
        where = f"{device} in network namespace {netns}" if netns else device
        super().__init__(f"Failed to attach to {where}: {problem} (fix: {fix})")


class ChannelError(MigratorError):
    """A consumer could not open or read its channel."""

    def __init__(self, channel: str, reason: str) -> None:
        self.channel, self.reason = channel, reason
        super().__init__(f"{channel} channel: {reason}")


class UnknownHost(MigratorError):
    """A host name the migration does not list. Points at the names it does list (the closest first);
    never at canary.toml, since a host added there changes the recorded plan and every agent refuses it."""

    def __init__(self, host: str, migration_id: int, hosts: Iterable[str]) -> None:
        self.host, self.migration_id, self.hosts = host, migration_id, list(hosts)
        close = close_matches(host, self.hosts, n=3)
        hint = f"; did you mean {' or '.join(filter(None, [', '.join(close[:-1]), close[-1]]))}?" if close else ""
        listed = ", ".join(self.hosts) or "none"
        super().__init__(f"host {host!r} is not part of migration {migration_id}{hint} (fix: use a host name "
                         f"from its plan: {listed}; a host it does not list needs a new migration planned with it)")


class DrillError(MigratorError):
    """A drill (fault injection) request is malformed: names the field, the value and the fix."""

    def __init__(self, field: str, value: object, fix: str) -> None:
        self.field, self.value, self.fix = field, value, fix
        super().__init__(f"drill: {field}={value!r} is not valid (fix: {fix})")


class TransitionNotAllowed(MigratorError):
    """An illegal phase move: names the current phase and the attempted one."""

    def __init__(self, current: str, target: str, why: str = "") -> None:
        self.current, self.target, self.why = current, target, why
        msg = f"cannot go from {current} to {target}"
        if why:
            msg += f": {why}"
        super().__init__(msg)


class GuardFailed(MigratorError):
    """A transition is legal but a guard (clean windows, fingerprint, manual gate) refuses it."""

    def __init__(self, current: str, target: str, guard: str, detail: str) -> None:
        self.current, self.target, self.guard, self.detail = current, target, guard, detail
        super().__init__(f"cannot go from {current} to {target}: guard {guard!r}: {detail}")


class StoreError(MigratorError):
    """Database missing, newer than this code, or otherwise unusable."""


class DatabaseUnavailable(StoreError):
    """The database cannot be opened, read or written (driver, URL, file, server, lock, disk).

    `url` is shown with its password hidden; `problem` says what went wrong, `fix` what to do.
    Raised once, at the store's boundary, in place of the driver's exception.
    """

    def __init__(self, url: str, problem: str, fix: str) -> None:
        self.url, self.problem, self.fix = url, problem, fix
        super().__init__(f"database {url}: {problem} (fix: {fix})")


class DatabaseMissing(StoreError):
    """A read-only command found no database file (read-only openers never create one)."""

    def __init__(self, path: str, fix: str = "run `migrator init` first") -> None:
        self.path, self.fix = path, fix
        super().__init__(f"no database at {path}; {fix}")


class RevisionMismatch(StoreError):
    """The database's alembic revision is not the one this code can use as it is.

    `current` is the stamped revision (None: empty or not a migrator database), `head` this
    code's newest one; the message says which way they differ and what to do.
    """

    def __init__(self, url: str, current: str | None, head: str, problem: str, fix: str) -> None:
        self.url, self.current, self.head, self.problem, self.fix = url, current, head, problem, fix
        super().__init__(f"database {url} {problem}; {fix}")


class LeaseHeld(MigratorError):
    """Another controller holds the lease on this migration."""

    def __init__(self, migration_id: int, holder: str, expires_at: str) -> None:
        self.migration_id, self.holder, self.expires_at = migration_id, holder, expires_at
        super().__init__(
            f"migration {migration_id} is driven by controller {holder!r} (lease until {expires_at}); "
            "stop it first or wait for the lease to expire"
        )


class LabError(MigratorError):
    """Network namespace lab set-up or tear-down failed."""


class LabPermissionError(LabError):
    """The lab needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN for namespaces)."""

    def __init__(self, action: str) -> None:
        self.action = action
        super().__init__(f"lab {action} needs root (network namespaces, veth, tc); run it with sudo")


class LabConfigError(LabError):
    """A lab option (host count, prefix, profile, rate) is out of range: names it and the fix."""

    def __init__(self, option: str, value: object, fix: str) -> None:
        self.option, self.value, self.fix = option, value, fix
        super().__init__(f"lab: {option}={value!r} is not valid (fix: {fix})")


class LabNameCollision(LabError):
    """A name the lab wants is taken by something the lab did not make."""

    def __init__(self, name: str, what: str, fix: str) -> None:
        self.name, self.what, self.fix = name, what, fix
        super().__init__(f"lab: {name!r} already exists and is {what}, not a lab object (fix: {fix})")


class LabHostNotFound(LabError):
    """A lab host named on the command line or in code does not exist."""

    def __init__(self, host: str, prefix: str) -> None:
        self.host, self.prefix = host, prefix
        super().__init__(f"lab host {host!r} not found; create it with `migrator lab up --prefix {prefix}` "
                         f"or list hosts with `migrator lab status --prefix {prefix}`")


class TransitionPending(MigratorError):
    """A transition was recorded (intent) but not yet confirmed; no second one may start."""

    def __init__(self, migration_id: int, transition_id: int, move: str) -> None:
        self.migration_id, self.transition_id, self.move = migration_id, transition_id, move
        super().__init__(
            f"migration {migration_id}: transition {transition_id} ({move}) is still being applied; "
            "it is finished by the running controller or by the next writing command"
        )


class ApplyTimeout(MigratorError):
    """Agents did not report the desired mode in time; the transition stays an intent and is retried."""

    def __init__(self, migration_id: int, hosts: list[str], timeout: float) -> None:
        self.migration_id, self.hosts, self.timeout = migration_id, hosts, timeout
        shown = ", ".join(hosts[:5]) + (f" and {len(hosts) - 5} more" if len(hosts) > 5 else "")
        super().__init__(
            f"migration {migration_id}: hosts {shown} did not apply their desired mode within "
            f"{timeout:g} s; check their agents (`migrator status`)"
        )


class OptionError(MigratorError):
    """A command-line option (or the argument of a library call standing for one) has an invalid
    value: a usage error, so it exits 2 like every other usage error."""

    exit_code = 2

    def __init__(self, option: str, value: object, problem: str, fix: str) -> None:
        self.option, self.value, self.problem, self.fix = option, value, problem, fix
        super().__init__(f"{option}: {self.detail}")

    @property
    def detail(self) -> str:
        """The message without the option name (for typer.BadParameter, which names it itself)."""
        return f"{self.value!r} {self.problem} (fix: {self.fix})"


class ConfigChanged(MigratorError):
    """canary.toml is not the one a migration was initialised with (compared by hash).

    With `phase`, another migration is still active and `init` refuses a second plan; without,
    a command that drives the migration refuses the edited file.
    """

    def __init__(self, migration_id: int, path: str, config_hash: str, recorded_hash: str,
                 phase: str | None = None) -> None:
        self.migration_id, self.path, self.phase = migration_id, path, phase
        self.config_hash, self.recorded_hash = config_hash, recorded_hash
        if phase is not None:
            msg = (f"migration {migration_id} is {phase} with another config (hash {recorded_hash[:12]}, "
                   f"{path} has {config_hash[:12]}); finish or `migrator abort` it before starting a new plan")
        else:
            msg = (f"{path} changed since migration {migration_id} was initialised (hash {config_hash[:12]}, "
                   f"recorded {recorded_hash[:12]}); revert it, or abort and `migrator init` again")
        super().__init__(msg)


class SourceChanged(MigratorError):
    """The operator's program ([source] kind = "bcc": its C file, cflags or migrator.h) is not the
    one a migration was initialised with (compared by source hash).

    With `phase`, the migration is still active and `init` refuses to record it again; without,
    a command that drives (or serves) the migration refuses the edited program.
    """

    def __init__(self, migration_id: int, file: str, source_hash: str | None, recorded_hash: str | None,
                 phase: str | None = None) -> None:
        self.migration_id, self.file, self.phase = migration_id, file, phase
        self.source_hash, self.recorded_hash = source_hash, recorded_hash
        now, then = (source_hash or "none")[:12], (recorded_hash or "none")[:12]
        if phase is not None:
            msg = (f"migration {migration_id} is {phase} with another build of {file} (source hash {then}, "
                   f"now {now}); finish or `migrator abort` it before recording the new program")
        else:
            msg = (f"{file} (its bytes, cflags or migrator.h) changed since migration {migration_id} was "
                   f"initialised (source hash {now}, recorded {then}); revert it, or abort and `migrator init` again")
        super().__init__(msg)


class BenchError(MigratorError):
    """A benchmark could not produce a valid measurement: names the bench, what went wrong and the fix."""

    def __init__(self, bench: str, problem: str, fix: str) -> None:
        self.bench, self.problem, self.fix = bench, problem, fix
        super().__init__(f"bench {bench}: {problem} (fix: {fix})")


class InstallError(MigratorError):
    """A file migrator ships (BPF sources, alembic scripts) is missing or unusable: reinstall."""

    def __init__(self, path: str, problem: str, fix: str = "reinstall migrator (pip install --force-reinstall)") -> None:
        self.path, self.problem, self.fix = path, problem, fix
        super().__init__(f"{path}: {problem} (fix: {fix})")


class SchemaError(MigratorError):
    """A payload layout cannot be registered: names the type, the version and the fix."""

    def __init__(self, type_id: int, version: int, problem: str, fix: str) -> None:
        self.type_id, self.version, self.problem, self.fix = type_id, version, problem, fix
        super().__init__(f"event type {type_id} version {version} {problem} (fix: {fix})")


class SourceError(MigratorError):
    """A BPF program text cannot be prepared for migrator channels: names the file, the line,
    what is wrong there and the fix."""

    def __init__(self, file: str, line: int, problem: str, fix: str) -> None:
        self.file, self.line, self.problem, self.fix = file, line, problem, fix
        super().__init__(f"{file}:{line}: {problem} (fix: {fix})")


class PrivilegeError(MigratorError):
    """This process lacks the capabilities to create BPF maps or load BPF programs: names the
    missing capabilities and the fix, before any compiler or verifier output could confuse it."""

    def __init__(self, what: str, euid: int, missing: list[str], fix: str) -> None:
        self.what, self.euid, self.missing, self.fix = what, euid, list(missing), fix
        super().__init__(f"{what}: loading BPF programs needs root, or CAP_BPF and CAP_PERFMON (CAP_SYS_ADMIN "
                         f"also does); this process (euid {euid}) lacks {' and '.join(missing)} (fix: {fix})")


class HostLeaseHeld(MigratorError):
    """Another live process already serves this host (agent, library attach or wrap): one per host.

    Exit code 3 from the CLI, so a supervisor can tell "already running" from a failure."""

    exit_code = 3

    def __init__(self, host: str, holder: str, expires_at: str) -> None:
        self.host, self.holder, self.expires_at = host, holder, expires_at
        super().__init__(
            f"host {host!r} is already served by {holder!r} (host lease until {expires_at}); one process per "
            "host: stop that one first, or wait for its lease to lapse (a dead process on this machine is "
            "taken over at once)"
        )
