"""Group commit: many requests' writes to a transaction.

Every request writes at least once: its usage record (and whatever settles with it).
Done one transaction (and one thread hop) per write, the commits, the hops and the
threads fighting over the GIL cost more than the gateway's own work. Here one thread,
with its own connection, takes every write that is waiting, runs them in order inside
one transaction and commits once; each request's ``await`` returns when the
transaction holding its write has committed (nothing is written behind a request's
back: a request that got its answer is in the database).

A job is a plain function ``fn(batch, *args)`` run inside the transaction. It returns
its result or raises an ``LLMError`` (an answer such as ``BudgetExceeded``, after
leaving the database as it found it); rows go to ``batch.add()`` and are inserted in
one statement at the end. If the transaction fails otherwise, each job runs again
alone, in its own transaction, so one bad write fails only its own request.

A write can fail two ways. The database may be *unavailable* (locked, down, gone):
then the accounting is unhealthy (``healthy()``) and a job marked ``keep`` is written
again between batches until it commits. Or the database may refuse the write's
*content* (a constraint, a value out of range): that says nothing of the database, so
it never makes the accounting unhealthy and is never retried as it was; a job with a
``repair`` is written once more in the safe form it makes, and otherwise fails alone.

A caller that stops waiting may ``give_up`` its write while no transaction holds it
(queued, or kept after a failure): the job then runs with the arguments its
``on_give_up`` makes (a usage record turned into a refusal, say). Whether it could is
what the caller may tell its client.

The writer knows nothing of what the jobs write. Jobs that share state within a
transaction (say, budget rows read once, changed in memory, written once) use a
``Part``: ``batch.part(Kind)`` makes one per transaction, ``flush()``ed before the
inserts. A job's ``claim`` names the keys of a part it will touch: before any job of a
batch runs, each part claims them all at once (budget rows are then locked in id
order, so two processes' batches cannot deadlock). ``Chore``s are work the thread does
between batches and when it stops (returning unused budget allowances, for one).
``DB_THREADS = 0`` runs each job in the caller's thread, in its own transaction.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from asgiref.sync import sync_to_async
from django.db import DatabaseError, DataError, IntegrityError, connections, transaction

from ...conf import llm_settings
from ...exceptions import LLMError
from ..db import refresh_connections, write_lock

logger = logging.getLogger("llm_integration.writer")
P = TypeVar("P")

MAX_BATCH = 256
_STOP = object()


class Part(Protocol):
    """State the jobs of one transaction share, written once at its end."""

    def claim(self, keys: list) -> None:
        """Before any job runs: prepare (read, lock) what the jobs will touch."""

    def flush(self) -> None:
        """Write what the jobs changed (inside the transaction)."""


@dataclass(frozen=True, slots=True)
class Claim:
    """The keys of a ``Part`` that a job will touch."""

    part: type
    keys: tuple


@dataclass(frozen=True, slots=True)
class Chore:
    """Work of the writer's thread between batches: ``run(final=False)`` every
    ``interval()`` seconds while ``due()``, and ``run(final=True)`` when it stops."""

    run: Callable[..., None]
    interval: Callable[[], float]
    due: Callable[[], bool]


class Batch:
    """What one transaction collects: its parts, and rows to insert at the end."""

    def __init__(self) -> None:
        self.inserts: dict[type, list] = defaultdict(list)
        self.parts: dict[type, Any] = {}

    def add(self, obj: Any) -> None:
        self.inserts[type(obj)].append(obj)

    def part(self, kind: type[P]) -> P:
        """This transaction's ``kind`` part, made on first use."""
        part = self.parts.get(kind)
        if part is None:
            part = self.parts[kind] = kind()
        return part

    def claim(self, claims: Iterable[Claim]) -> None:
        keys: dict[type, list] = defaultdict(list)
        for claim in claims:
            keys[claim.part].extend(claim.keys)
        for kind, wanted in keys.items():
            self.part(kind).claim(wanted)

    def flush(self) -> None:
        for part in self.parts.values():
            part.flush()
        for model, objs in self.inserts.items():
            insert_rows(model, objs)
        self.inserts.clear()


def insert_rows(model, objs: list) -> None:
    """``bulk_create`` without primary keys back and without the ORM's per-field SQL
    compilation: one ``INSERT … VALUES (…), (…)`` of the concrete fields' values as
    Django prepares them for saving (``pre_save``, ``get_db_prep_save``)."""
    db = transaction.get_connection()  # the wrapper itself: no proxy lookup per value
    statement = insert_statement(model, db.alias, db.vendor)
    fields = statement.fields
    step = max(1, db.ops.bulk_batch_size(fields, objs) if objs else 1)
    with db.cursor() as cursor:
        for start in range(0, len(objs), step):
            chunk = objs[start : start + step]
            params = [
                f.get_db_prep_save(f.pre_save(obj, True), db) for obj in chunk for f in fields
            ]
            cursor.execute(statement.sql(len(chunk)), params)


@dataclass(frozen=True, slots=True)
class InsertStatement:
    """A model's ``INSERT`` of its concrete fields but the key, for one database."""

    fields: tuple
    head: str
    row: str

    def sql(self, rows: int) -> str:
        return self.head + ", ".join([self.row] * rows) if rows > 1 else self.head + self.row


@functools.cache
def insert_statement(model, alias: str, vendor: str) -> InsertStatement:
    """Built once per model and database: the columns are the same for every write."""
    ops = connections[alias].ops
    fields = tuple(f for f in model._meta.concrete_fields if not f.primary_key)
    columns = ", ".join(ops.quote_name(f.column) for f in fields)
    return InsertStatement(
        fields,
        f"INSERT INTO {ops.quote_name(model._meta.db_table)} ({columns}) VALUES ",
        "(" + ", ".join(["%s"] * len(fields)) + ")",
    )


class Ticket:
    """Where a job is: queued (or kept), in a transaction, or done; and whether its
    caller gave up on it. Shared by the caller and the writer's thread."""

    __slots__ = ("given_up", "state")

    QUEUED, RUNNING, DONE = range(3)

    def __init__(self) -> None:
        self.state = Ticket.QUEUED
        self.given_up = False


@dataclass(slots=True)
class Job:
    fn: Callable
    args: tuple
    claim: Claim | None
    loop: asyncio.AbstractEventLoop | None
    future: asyncio.Future | None
    #: Kept and written again until it commits if the database is unavailable.
    keep: bool = False
    #: ``repair(args)``: the arguments in a form the database cannot refuse.
    repair: Callable[[tuple], tuple] | None = None
    #: ``on_give_up(args)``: the arguments to write if the caller gives up first.
    on_give_up: Callable[[tuple], tuple] | None = None
    ticket: Ticket | None = None


def content_error(error: BaseException) -> bool:
    """Whether the database refused a write for what it holds (not for being
    unavailable): a constraint, a value out of range, a value the driver cannot send."""
    return isinstance(error, IntegrityError | DataError) or not isinstance(error, DatabaseError)


def _deliver(done: list[tuple[asyncio.Future, Any, BaseException | None]]) -> None:
    for future, result, error in done:
        if future.cancelled():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


class GroupWriter:
    """One thread committing the jobs it finds waiting, in order, a batch at a time."""

    def __init__(self, *, max_batch: int = MAX_BATCH) -> None:
        self.max_batch = max_batch
        self.chores: list[Chore] = []
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        #: Transactions committed and jobs they carried (for metrics and tests).
        self.commits = self.jobs = 0
        self._chores_run = 0.0
        self._atexit = False
        #: Jobs the database failed that must still be written (retried between batches).
        self.kept: list[Job] = []
        self._kept_lock = threading.Lock()
        #: time.monotonic() of the last write the database failed (None: the last worked).
        self.failed_at: float | None = None
        self.chores.append(
            Chore(run=self._write_kept, interval=_retry_interval, due=lambda: bool(self.kept))
        )

    def healthy(self) -> bool:
        """False while writes an unavailable database failed are still owed (kept
        jobs), and for ``ACCOUNTING_RETRY_INTERVAL`` seconds after it failed one (then new
        requests may try the database again). A refused row says nothing of health."""
        if self.kept:
            return False
        failed = self.failed_at
        return failed is None or time.monotonic() - failed >= _retry_interval()

    def add_chore(self, chore: Chore) -> None:
        self.chores.append(chore)

    # -- the event loop's side --------------------------------------------------------
    def write(
        self,
        fn: Callable,
        *args: Any,
        claim: Claim | None = None,
        keep: bool = False,
        repair: Callable[[tuple], tuple] | None = None,
        on_give_up: Callable[[tuple], tuple] | None = None,
        ticket: Ticket | None = None,
    ) -> asyncio.Future:
        """``await writer.write(fn, ...)``: ``fn(batch, ...)``'s result once committed.
        ``keep``: if the database is unavailable, the caller gets the error and the job
        is written again between batches until it commits. ``repair``: what to write
        instead if the database refuses the content. ``on_give_up`` and ``ticket``: see
        ``give_up``."""
        job = Job(fn, args, claim, None, None, keep, repair, on_give_up, ticket)
        if int(llm_settings.DB_THREADS) <= 0:
            return asyncio.ensure_future(sync_to_async(self._alone)(job))
        job.loop = asyncio.get_running_loop()
        job.future = job.loop.create_future()
        self._queue.put(job)
        if self._thread is None:
            self._start()
        return job.future

    def give_up(self, ticket: Ticket) -> bool:
        """The caller no longer waits: True if no transaction holds the job (it will
        be written as its ``on_give_up`` makes it), False if one does (its outcome
        stands)."""
        with self._kept_lock:
            if ticket.state != Ticket.QUEUED:
                return False
            ticket.given_up = True
            return True

    def _take(self, jobs: list[Job]) -> None:
        """The jobs enter a transaction: those given up take their other form."""
        with self._kept_lock:
            for job in jobs:
                ticket = job.ticket
                if ticket is None:
                    continue
                if ticket.given_up and job.on_give_up is not None:
                    job.args, job.on_give_up = job.on_give_up(job.args), None
                ticket.state = Ticket.RUNNING

    def _settle(self, job: Job, error: BaseException | None) -> None:
        if job.ticket is not None:
            kept = error is not None and job.keep and not content_error(error)
            job.ticket.state = Ticket.QUEUED if kept else Ticket.DONE

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="llm-writer", daemon=True)
                self._thread.start()
                if not self._atexit:  # commit what is queued, do the chores a last time
                    self._atexit = True
                    atexit.register(self.stop)

    def stop(self) -> None:
        """Commit what is queued, run the chores a last time, close the thread's
        connections, end the thread (it starts again on the next write)."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is None:
                return
            self._queue.put(_STOP)
        thread.join(timeout=30)

    # -- the writer thread ------------------------------------------------------------
    def _idle_wait(self) -> float | None:
        """How long to wait for a job before the due chores run (None: no chore due)."""
        intervals = [max(0.01, chore.interval()) for chore in self.chores if chore.due()]
        return min(intervals) if intervals else None

    def _run(self) -> None:
        try:
            while True:
                wait = self._idle_wait()
                try:
                    item = self._queue.get(timeout=wait)
                except queue.Empty:
                    self._do_chores()
                    continue
                jobs, stop = [], item is _STOP
                while not stop:
                    jobs.append(item)
                    if len(jobs) >= self.max_batch:
                        break
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    stop = item is _STOP
                if jobs:
                    self._deliver(jobs, self._commit(jobs))
                if stop:
                    self._do_chores(final=True)
                    return
                if wait is not None and time.monotonic() - self._chores_run > wait:
                    self._do_chores()
        finally:
            connections.close_all()

    def _do_chores(self, *, final: bool = False) -> None:
        self._chores_run = time.monotonic()
        refresh_connections()
        for chore in self.chores:
            if final or chore.due():
                try:
                    chore.run(final=final)
                except Exception:
                    logger.exception("llm.writer_chore_failed")

    def _deliver(self, jobs: list[Job], outcomes: list[tuple[Any, BaseException | None]]):
        by_loop: dict[asyncio.AbstractEventLoop, list] = defaultdict(list)
        for job, (result, error) in zip(jobs, outcomes, strict=True):
            if error is not None and job.keep and not content_error(error):
                self._keep(job)
            with self._kept_lock:
                self._settle(job, error)
            if job.loop is not None:
                by_loop[job.loop].append((job.future, result, error))
        for loop, done in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, done)
            except RuntimeError:  # that loop has closed: nobody waits any more
                pass

    def _commit(self, jobs: list[Job]) -> list[tuple[Any, BaseException | None]]:
        refresh_connections()
        self._take(jobs)
        try:
            with write_lock(), transaction.atomic():
                batch = Batch()
                batch.claim(job.claim for job in jobs if job.claim is not None)
                outcomes = [_run_job(job.fn, job.args, batch) for job in jobs]
                batch.flush()
            self.commits += 1
            self.jobs += len(jobs)
            self.failed_at = None
            return outcomes
        except Exception as error:
            if not content_error(error):
                self.failed_at = time.monotonic()
            if len(jobs) > 1:
                # Something in the batch broke the transaction: each job alone, so only
                # the culprit fails.
                return [self._commit([job])[0] for job in jobs]
            job = jobs[0]
            if content_error(error) and self._repair(job, error):
                return self._commit([job])
            logger.exception("llm.writer_failed", extra={"job": _name(job)})
            return [(None, error)]

    def _repair(self, job: Job, error: BaseException) -> bool:
        """Give ``job`` its safe form (once); False if it has none."""
        repair, job.repair = job.repair, None
        if repair is None:
            return False
        logger.error(
            "llm.write_repaired",
            extra={"job": _name(job), "error": f"{type(error).__name__}: {error}"[:300]},
        )
        try:
            job.args = repair(job.args)
        except Exception:
            logger.exception("llm.write_repair_failed", extra={"job": _name(job)})
            return False
        return True

    def _alone(self, job: Job) -> Any:
        # One job: nothing else's locks to order its own against (a part still orders
        # its writes), so its claim is not needed.
        result, error = self._commit_alone(job)
        if error is not None and job.keep and not content_error(error):
            self._keep(job)
        self._settle(job, error)
        if error is not None:
            raise error
        return result

    def _commit_alone(self, job: Job) -> tuple[Any, BaseException | None]:
        self._take([job])
        try:
            with write_lock(), transaction.atomic():
                batch = Batch()
                result = job.fn(batch, *job.args)
                batch.flush()
        except LLMError as error:
            return None, error
        except Exception as error:
            if not content_error(error):
                self.failed_at = time.monotonic()
                return None, error
            if not self._repair(job, error):
                logger.exception("llm.writer_failed", extra={"job": _name(job)})
                return None, error
            return self._commit_alone(job)
        self.failed_at = None
        return result, None

    def _keep(self, job: Job) -> None:
        logger.error("llm.write_kept", extra={"job": _name(job)})
        with self._kept_lock:
            self.kept.append(
                Job(
                    job.fn,
                    job.args,
                    job.claim,
                    None,
                    None,
                    keep=True,
                    repair=job.repair,
                    on_give_up=job.on_give_up,
                    ticket=job.ticket,
                )
            )

    def _write_kept(self, *, final: bool = False) -> None:
        """Write the kept jobs again, in order, each in its own transaction; those the
        database still fails stay kept (and requests keep being refused meanwhile)."""
        with self._kept_lock:
            jobs = list(self.kept)
        for job in jobs:
            error = self._commit([job])[0][1]
            unavailable = error is not None and not content_error(error)
            if unavailable and not final:
                with self._kept_lock:
                    self._settle(job, error)
                return  # still failing: keep them all, in order, for the next round
            with self._kept_lock:
                self.kept.remove(job)
                job.keep = False
                self._settle(job, error)
            if error is not None:  # refused even repaired, or the process ends
                lost = {"job": _name(job), "arguments": repr(job.args)}
                logger.error("llm.write_lost", extra=lost)
            else:
                logger.warning("llm.kept_write_done", extra={"job": _name(job)})


def _name(job: Job) -> str:
    return getattr(job.fn, "__name__", "job")


def _retry_interval() -> float:
    return max(0.05, float(llm_settings.ACCOUNTING_RETRY_INTERVAL))


def _run_job(fn: Callable, args: tuple, batch: Batch) -> tuple[Any, BaseException | None]:
    try:
        return fn(batch, *args), None
    except LLMError as error:  # an answer, not a failure: the job left nothing behind
        return None, error


writer = GroupWriter()
