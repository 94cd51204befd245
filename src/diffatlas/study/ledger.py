"""The study ledger: one SQLite database (WAL mode) in the study's output folder.

    runs(id, position, status, attempts, worker, heartbeat, started, finished, error, run_dir, config, labels,
         job, log)

status is pending | running | done | failed. A runner claims a run inside one `BEGIN IMMEDIATE`
transaction (SQLite's write lock), so concurrent runner processes never take the same run.
Before each claim, 'running' rows whose worker is gone are handed back: their heartbeat is
older than `stale_after` seconds, or their worker is a dead process on this host (a SIGKILLed
runner). A reclaimed run is not counted as a failure: training and evaluation resume by
themselves. A run whose work raised is retried until it has been attempted `max_attempts` times.

`job` names the cluster job doing a run ("slurm:123", "slurm:123_4", "ray:<actor>") and `log`
its log file. A running row with a job belongs to that job, not to a local worker: it is never
handed back by the rule above; a driver of the same executor takes it over (`adopt`) when the
driver that submitted it is gone, and re-attaches to the job instead of submitting it again.
Only drivers and local runners, all on the machine that holds the study folder, open the ledger;
cluster jobs never do.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ..errors import UserError

STATUSES = ("pending", "running", "done", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    heartbeat REAL,
    started REAL,
    finished REAL,
    error TEXT,
    run_dir TEXT NOT NULL,
    config TEXT NOT NULL,
    labels TEXT NOT NULL,
    job TEXT,
    log TEXT
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
# Columns added after the first ledgers were written: an older ledger gains them when opened.
_ADDED_COLUMNS = (("job", "TEXT"), ("log", "TEXT"))


def ledger_error(path: Path, e: sqlite3.Error) -> UserError:
    """A one-line error for a ledger SQLite cannot use: corrupt, truncated, foreign, read-only."""
    text = str(e)
    if any(w in text for w in ("not a database", "malformed", "corrupt")):
        return UserError(f"study ledger {str(path)!r} is not a readable SQLite database ({text}); move it away: "
                         "`diffatlas study run` then writes a new one and finds finished runs in their folders")
    if any(w in text for w in ("readonly", "read-only", "unable to open", "disk I/O")):
        return UserError(f"study ledger {str(path)!r} cannot be opened for writing ({text}); check the permissions "
                         "of the file and its folder")
    return UserError(f"study ledger {str(path)!r}: {text}")


def _busy(e: sqlite3.Error) -> bool:
    return isinstance(e, sqlite3.OperationalError) and ("locked" in str(e) or "busy" in str(e))


def worker_name(tag: str | None = None) -> str:
    """host:pid[:tag], unique per process on a host."""
    name = f"{socket.gethostname()}:{os.getpid()}"
    return f"{name}:{tag}" if tag else name


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (exited, not yet reaped by its parent) is dead for our purposes
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def worker_dead(worker: str | None) -> bool:
    """True if `worker` (host:pid[:tag]) is a process of this host that no longer exists."""
    if not worker:
        return True
    parts = worker.split(":")
    if len(parts) < 2 or parts[0] != socket.gethostname():
        return False
    try:
        return not _pid_alive(int(parts[1]))
    except ValueError:
        return False


@dataclass
class RunRow:
    id: str
    position: int
    status: str
    attempts: int
    worker: str | None
    heartbeat: float | None
    started: float | None
    finished: float | None
    error: str | None
    run_dir: str
    config: dict
    labels: dict
    job: str | None = None
    log: str | None = None


class Ledger:
    """Run bookkeeping for one study output folder. Safe across processes (one connection each)."""

    def __init__(self, path: str | Path, *, max_attempts: int = 2, stale_after: float = 600.0) -> None:
        self.path = Path(path)
        self.max_attempts = max_attempts
        self.stale_after = stale_after
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_dir():
            raise UserError(f"study ledger {str(self.path)!r} is a folder; move it away")
        try:
            self._db = sqlite3.connect(str(self.path), timeout=60.0, isolation_level=None)
        except sqlite3.Error as e:
            raise ledger_error(self.path, e) from None
        for i in range(50):  # two runners creating the ledger at once: switching to WAL can report busy
            try:
                self._db.execute("PRAGMA busy_timeout=60000")
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.executescript(_SCHEMA)
                check = self._db.execute("PRAGMA quick_check(1)").fetchone()
                if check is None or check[0] != "ok":
                    raise sqlite3.DatabaseError(f"database disk image is malformed: {check[0] if check else ''}")
                self._add_columns()
                break
            except sqlite3.Error as e:
                if not _busy(e) or i == 49:
                    self._db.close()
                    raise ledger_error(self.path, e) from None
                time.sleep(0.05 * (i + 1))

    def _add_columns(self) -> None:
        def missing(db: sqlite3.Connection) -> list[tuple[str, str]]:
            have = {r[1] for r in db.execute("PRAGMA table_info(runs)")}
            return [(c, t) for c, t in _ADDED_COLUMNS if c not in have]

        if missing(self._db):
            with self._tx() as db:  # checked again under the write lock: another runner may have added them
                for column, kind in missing(db):
                    db.execute(f"ALTER TABLE runs ADD COLUMN {column} {kind}")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- transactions ------------------------------------------------------------------------
    def _tx(self) -> "_Tx":
        return _Tx(self._db, self.path)

    # ---- setup -------------------------------------------------------------------------------
    def sync(self, runs: Iterable[Any], runs_root: str | Path) -> int:
        """Insert runs that are not in the ledger yet as pending; returns how many were added.
        `runs` are RunSpec objects (id, index, config_dict, labels, run_dir: kept as given when set)."""
        added = 0
        root = Path(runs_root).resolve()
        try:  # stored relative to the ledger's folder, so the study folder can move
            root_text = str(root.relative_to(self.path.parent.resolve()))
        except ValueError:
            root_text = str(root)
        with self._tx() as db:
            for r in runs:
                cur = db.execute(
                    "INSERT OR IGNORE INTO runs (id, position, status, run_dir, config, labels) VALUES (?, ?, 'pending', ?, ?, ?)",
                    (r.id, r.index, str(getattr(r, "run_dir", None) or Path(root_text) / r.id),
                     json.dumps(r.config_dict, sort_keys=True, default=str),
                     json.dumps(r.labels, default=str)))
                added += cur.rowcount
        return added

    def set_meta(self, key: str, value: Any) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value, default=str)))

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    # ---- claiming ----------------------------------------------------------------------------
    def reclaim_stale(self, now: float | None = None) -> list[str]:
        """Hand back 'running' rows whose worker is gone; returns their ids."""
        with self._tx() as db:
            return self._reclaim(db, now if now is not None else time.time())

    def _reclaim(self, db: sqlite3.Connection, now: float) -> list[str]:
        ids = []
        for rid, worker, hb in db.execute("SELECT id, worker, heartbeat FROM runs WHERE status = 'running' "
                                          "AND job IS NULL").fetchall():
            if (hb is None or now - hb > self.stale_after) or worker_dead(worker):
                ids.append(rid)
        for rid in ids:
            # an interruption is not a failure: give the attempt back, training resumes by itself
            db.execute("UPDATE runs SET status = 'pending', worker = NULL, attempts = MAX(attempts - 1, 0) "
                       "WHERE id = ? AND status = 'running'", (rid,))
        return ids

    def claim(self, worker: str, only: Iterable[str] | None = None) -> RunRow | None:
        """Atomically take the next pending run (or a failed one with attempts left) for `worker`."""
        now = time.time()
        only_ids = set(only) if only is not None else None
        with self._tx() as db:
            self._reclaim(db, now)
            rows = db.execute(
                "SELECT id FROM runs WHERE status = 'pending' OR (status = 'failed' AND attempts < ?) "
                "ORDER BY status = 'failed', position", (self.max_attempts,)).fetchall()
            for (rid,) in rows:
                if only_ids is not None and rid not in only_ids:
                    continue
                db.execute("UPDATE runs SET status = 'running', worker = ?, heartbeat = ?, started = ?, finished = NULL, "
                           "attempts = attempts + 1, job = NULL, log = NULL WHERE id = ?", (worker, now, now, rid))
                return self._row(db, rid)
        return None

    def heartbeat(self, run_id: str, worker: str) -> bool:
        """Refresh the heartbeat; False if the run is no longer ours (it was reclaimed)."""
        with self._tx() as db:
            cur = db.execute("UPDATE runs SET heartbeat = ? WHERE id = ? AND worker = ? AND status = 'running'",
                             (time.time(), run_id, worker))
            return cur.rowcount == 1

    def finish(self, run_id: str, worker: str) -> bool:
        with self._tx() as db:
            cur = db.execute("UPDATE runs SET status = 'done', finished = ?, heartbeat = ?, error = NULL "
                             "WHERE id = ? AND worker = ? AND status = 'running'", (time.time(), time.time(), run_id, worker))
            return cur.rowcount == 1

    def fail(self, run_id: str, worker: str, error: str) -> bool:
        with self._tx() as db:
            cur = db.execute("UPDATE runs SET status = 'failed', finished = ?, error = ? "
                             "WHERE id = ? AND worker = ? AND status = 'running'", (time.time(), error, run_id, worker))
            return cur.rowcount == 1

    def release(self, run_id: str, worker: str) -> bool:
        """Give a run back (interrupted by the user, or its cluster job vanished without a result):
        pending again, the attempt not counted."""
        with self._tx() as db:
            cur = db.execute("UPDATE runs SET status = 'pending', worker = NULL, job = NULL, "
                             "attempts = MAX(attempts - 1, 0) WHERE id = ? AND worker = ? AND status = 'running'",
                             (run_id, worker))
            return cur.rowcount == 1

    # ---- cluster jobs (written by the driver only) -------------------------------------------
    def set_job(self, run_id: str, worker: str, job: str, log: str | None = None) -> bool:
        """Record the cluster job (and its log file) doing a run claimed by `worker`."""
        with self._tx() as db:
            cur = db.execute("UPDATE runs SET job = ?, log = ?, heartbeat = ? WHERE id = ? AND worker = ? "
                             "AND status = 'running'", (job, log, time.time(), run_id, worker))
            return cur.rowcount == 1

    def adopt(self, executor: str, worker: str, only: Iterable[str] | None = None) -> list[RunRow]:
        """Take over the running rows with a job of `executor` whose driver is gone (a dead process
        on this host, or no heartbeat for `stale_after` s); returns every running row of that
        executor now held by `worker`, its own included. Their jobs keep running: nothing is
        submitted again."""
        now = time.time()
        only_ids = set(only) if only is not None else None
        with self._tx() as db:
            held = []
            for rid, owner, hb in db.execute("SELECT id, worker, heartbeat FROM runs WHERE status = 'running' "
                                             "AND job LIKE ? ORDER BY position", (f"{executor}:%",)).fetchall():
                if only_ids is not None and rid not in only_ids:
                    continue
                if owner != worker and not (hb is None or now - hb > self.stale_after or worker_dead(owner)):
                    continue  # another live driver follows it
                db.execute("UPDATE runs SET worker = ?, heartbeat = ? WHERE id = ?", (worker, now, rid))
                held.append(rid)
            return [self._row(db, rid) for rid in held]

    def hand_back(self, run_ids: Iterable[str]) -> int:
        """Make running rows pending again, whoever holds them (`study cancel`); the attempt is not counted."""
        with self._tx() as db:
            n = 0
            for rid in run_ids:
                n += db.execute("UPDATE runs SET status = 'pending', worker = NULL, job = NULL, "
                                "attempts = MAX(attempts - 1, 0) WHERE id = ? AND status = 'running'", (rid,)).rowcount
            return n

    def heartbeat_all(self, worker: str) -> int:
        """Refresh the heartbeat of every run `worker` holds (a driver following its jobs)."""
        with self._tx() as db:
            return db.execute("UPDATE runs SET heartbeat = ? WHERE worker = ? AND status = 'running'",
                              (time.time(), worker)).rowcount

    def reopen_done(self) -> int:
        """Make done runs pending again without counting an attempt (the study's evaluation changed:
        training finds its DONE record and returns, evaluation computes only the missing entries)."""
        with self._tx() as db:
            return db.execute("UPDATE runs SET status = 'pending', worker = NULL WHERE status = 'done'").rowcount

    def reset_failed(self) -> int:
        """Make failed runs eligible again (attempts back to 0)."""
        with self._tx() as db:
            return db.execute("UPDATE runs SET status = 'pending', attempts = 0, error = NULL WHERE status = 'failed'").rowcount

    # ---- reading -----------------------------------------------------------------------------
    def _row(self, db: sqlite3.Connection, rid: str) -> RunRow:
        r = db.execute("SELECT id, position, status, attempts, worker, heartbeat, started, finished, error, run_dir, config, labels, "
                       "job, log FROM runs WHERE id = ?", (rid,)).fetchone()
        run_dir = str(self.path.parent / r[9])  # an absolute stored path stays as it is
        try:
            config, labels = json.loads(r[10]), json.loads(r[11])
        except (TypeError, json.JSONDecodeError):
            raise UserError(f"study ledger {str(self.path)!r}: the row of run {r[0]} is damaged; move the ledger "
                            "away (`diffatlas study run` writes a new one)") from None
        return RunRow(*r[:9], run_dir, config, labels, r[12], r[13])

    def rows(self) -> list[RunRow]:
        ids = [r[0] for r in self._db.execute("SELECT id FROM runs ORDER BY position").fetchall()]
        return [self._row(self._db, i) for i in ids]

    def get(self, run_id: str) -> RunRow | None:
        if self._db.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is None:
            return None
        return self._row(self._db, run_id)

    def counts(self, only: Iterable[str] | None = None) -> dict[str, int]:
        """Runs per status: of the whole ledger, or of the runs `only` names."""
        out = {s: 0 for s in STATUSES}
        if only is not None:
            keep = set(only)
            for rid, status in self._db.execute("SELECT id, status FROM runs"):
                out[status] += rid in keep
            return out
        for status, n in self._db.execute("SELECT status, COUNT(*) FROM runs GROUP BY status"):
            out[status] = n
        return out


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error): one writer at a time across processes."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self.db = db
        self.path = path

    def __enter__(self) -> sqlite3.Connection:
        for i in range(100):
            try:
                self.db.execute("BEGIN IMMEDIATE")
                return self.db
            except sqlite3.OperationalError as e:  # busy beyond busy_timeout: retry
                if not _busy(e):
                    raise ledger_error(self.path, e) from None
                time.sleep(0.05 * (i + 1))
        raise sqlite3.OperationalError("ledger is locked")

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            try:
                self.db.execute("COMMIT")
                return
            except sqlite3.Error as e:
                exc = e
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error) and not _busy(exc):  # a read-only or damaged file: one line
            raise ledger_error(self.path, exc) from None
        if exc_type is None:
            raise exc
