"""Study storage: SQLite in the output folder by default, any SQLAlchemy URL (PostgreSQL) for many machines.

Credentials come only from the URL, from the ``SB3_DQN_EXT_TUNING_STORAGE`` environment variable holding it, or from
the database driver's own environment (``PGPASSWORD``, ``~/.pgpass``); they are never printed: every URL shown goes
through :func:`redact`.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import warnings
from pathlib import Path

import optuna
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

STORAGE_ENV_VAR = "SB3_DQN_EXT_TUNING_STORAGE"
# How many times a trial whose worker died (no heartbeat for ``grace_period`` seconds) is run again.
MAX_RETRY = 3


class StorageError(Exception):
    """The storage cannot be opened; the message is one line and holds no password."""


def resolve_url(storage: str | None, out: Path) -> str:
    """``--storage``, else ``$SB3_DQN_EXT_TUNING_STORAGE``, else ``sqlite:///OUT/study.db``."""
    url = storage or os.environ.get(STORAGE_ENV_VAR)
    return url or f"sqlite:///{(out / 'study.db').resolve()}"


def _parse(url: str) -> URL:
    try:
        return make_url(url)
    except ArgumentError as error:
        raise StorageError(f"storage URL is not a database URL (like sqlite:///study.db): {error}") from None


def redact(url: str) -> str:
    """The URL with its password replaced by ``***``, fit for logs."""
    try:
        return _parse(url).render_as_string(hide_password=True)
    except StorageError:
        return "<unparsable storage URL>"


def dashboard_command(url: str) -> str:
    """The ``optuna-dashboard`` command line for the study's storage, without the password.

    A PostgreSQL password is then read by the driver from ``PGPASSWORD`` or ``~/.pgpass``.
    """
    parsed = _parse(url)
    without_password = URL.create(
        parsed.drivername, parsed.username, None, parsed.host, parsed.port, parsed.database, parsed.query
    )
    return f"optuna-dashboard {shlex.quote(without_password.render_as_string(hide_password=False))}"


def _with_installed_driver(parsed: URL) -> URL:
    """``postgresql://`` means psycopg 3 to SQLAlchemy 2.1; fall back to psycopg2 when only that one is installed."""
    if parsed.drivername != "postgresql" or importlib.util.find_spec("psycopg") is not None:
        return parsed
    if importlib.util.find_spec("psycopg2") is not None:
        return parsed.set(drivername="postgresql+psycopg2")
    return parsed


def _engine_kwargs(backend: str) -> dict:
    if backend == "sqlite":
        # Several local worker processes share the file: wait for its lock instead of failing.
        return {"connect_args": {"timeout": 60}}
    if backend.startswith("postgresql"):
        return {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}
    return {"pool_pre_ping": True}


def open_storage(url: str, heartbeat_interval: int = 60, grace_period: int = 120) -> RDBStorage:
    """Connect to (and create the tables of) an RDB storage with heartbeats.

    A running trial whose worker stops sending heartbeats for ``grace_period`` seconds (killed, machine lost) is
    marked failed the next time any worker starts a trial, and :class:`RetryHeartbeatStaleTrialCallback` queues a
    copy of it, which the next free worker runs.

    :raises StorageError: with a one-line message naming the problem when the storage cannot be reached
    """
    parsed = _with_installed_driver(_parse(url))
    backend = parsed.get_backend_name()
    sqlite_file = backend == "sqlite" and parsed.database not in (None, "", ":memory:")
    if sqlite_file:
        folder = Path(parsed.database).parent
        if not folder.is_dir():
            raise StorageError(f"storage {redact(url)}: folder {folder} does not exist")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            storage = RDBStorage(
                parsed.render_as_string(hide_password=False),
                engine_kwargs=_engine_kwargs(backend),
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
            )
        except ImportError:
            raise StorageError(
                f"no database driver for {backend} storage: pip install 'sb3-dqn-ext[tuning]' (psycopg2 for PostgreSQL)"
            ) from None
        except Exception as error:  # SQLAlchemy wraps the driver's errors; keep their first line only
            first_line = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
            raise StorageError(f"cannot open storage {redact(url)}: {first_line}") from None
    if sqlite_file:
        _serialize_transactions(storage.engine)
    return storage


def _serialize_transactions(engine: sqlalchemy.engine.Engine) -> None:
    """Start every SQLite transaction with ``BEGIN IMMEDIATE``.

    Optuna takes a queued trial (enqueued, or a retry) by reading it as waiting and marking it running, relying on
    ``SELECT ... FOR UPDATE``, which SQLite ignores: two worker processes could then both run the same trial, and the
    second one fails when it reports. With the write lock taken at the start of each transaction they take turns.
    (SQLAlchemy's recipe for SQLite transactions; PostgreSQL honours ``FOR UPDATE``.)
    """

    @sqlalchemy.event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None

    @sqlalchemy.event.listens_for(engine, "begin")
    def _begin_immediate(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened while creating the tables predate the listeners
