"""Where units run: in this process, in local worker processes, or on a Ray cluster.

All backends give identical counts (see ``engine``); they differ only in speed. Workers receive
the payload once (the models and data), then units. Ray is an optional extra, imported lazily.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import pickle
import signal
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import replace
from multiprocessing.connection import Connection, wait
from typing import Any, NoReturn

from analog_onnx.arguments import spelled
from analog_onnx.errors import AnalogError
from analog_onnx.evaluate.engine import Counts, Evaluator, Payload, Unit

BACKENDS = ("local", "ray")
Progress = Callable[[int, int], None]  # called with (units finished so far, units in all)
Done = Callable[[int], None]  # called with the number of units just finished

MAIN_GUARD = 'if __name__ == "__main__":'


def run_units(payload: Payload, units: Iterable[Unit], total: int, *, backend: str = "local", workers: int = 1,
              ray_address: str | None = None, progress: Progress | None = None) -> Iterator[tuple[Unit, Counts]]:
    """Run the ``total`` units ``units`` yields, in that many processes (or Ray actors) for ``workers``
    > 1 (at most one per core on this machine), yielding each unit with its counts as it finishes.
    Units are taken from ``units`` as workers need them: a long grid is never held in memory."""
    if backend not in BACKENDS:
        raise AnalogError(f"unknown backend {backend!r}; use {' or '.join(BACKENDS)}")
    if workers < 1:
        raise AnalogError(f"{spelled('workers')} must be >= 1, got {workers}")
    finished = 0

    def done(count: int) -> None:
        nonlocal finished
        finished += count
        if progress is not None:
            progress(finished, total)

    done(0)  # show the total before the first unit finishes
    if backend == "ray":
        yield from _run_ray(payload, units, total, workers, ray_address, done)
    elif min(workers, total, cores()) <= 1:
        evaluator = Evaluator(payload)
        yield from _each(units, evaluator.run, done)
    else:
        yield from _run_processes(payload, units, min(workers, total, cores()), done)


def _each(units: Iterable[Unit], run: Callable[[Unit], Counts],
          done: Done) -> Iterator[tuple[Unit, Counts]]:
    for unit in units:
        counts = run(unit)
        done(1)
        yield unit, counts


def cores() -> int:
    """The cores this process may use: more worker processes or threads than these only compete."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _threads_per_worker(payload: Payload, workers: int) -> int:
    """Split the cores this process may use between workers unless the user fixed the thread count."""
    return payload.threads or max(1, cores() // workers)


def _run_processes(payload: Payload, units: Iterable[Unit], workers: int, done: Done) -> Iterator[tuple[Unit, Counts]]:
    # spawn, not fork: onnxruntime's thread pools do not survive a fork
    payload = replace(payload, threads=_threads_per_worker(payload, workers))
    with _sigterm_exits(), _WorkerPool(multiprocessing.get_context("spawn"), payload, workers) as pool:
        yield from pool.run(units, done)


@contextmanager
def _sigterm_exits() -> Iterator[None]:
    """While workers run, SIGTERM exits through ``finally`` blocks as Ctrl-C does, so the workers are
    stopped instead of orphaned. A handler the program installed itself is left alone."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def exit_(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, exit_)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


class _WorkerPool:
    """Worker processes fed one unit at a time, each through its own pipe. The parent waits on the
    pipes and on the processes together, so a worker that dies is an error at once, never a hang."""

    def __init__(self, context: Any, payload: Payload, count: int) -> None:
        self.workers: list[tuple[Any, Connection]] = []
        try:
            for _ in range(count):
                parent_end, child_end = context.Pipe()
                process = context.Process(target=_worker_main, args=(child_end,), daemon=True,
                                          name="analog-onnx-evaluate-worker")
                process.start()
                child_end.close()
                self.workers.append((process, parent_end))
            # the payload goes through our pipe, not the start arguments: multiprocessing writes those
            # while holding the pipe's read end, and blocks for ever when a worker dies before reading
            data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
            for process, conn in self.workers:
                try:
                    conn.send_bytes(data)
                except OSError:
                    _worker_died(process)
        except BaseException as error:  # a dead worker, SIGTERM or Ctrl-C while starting: stop them all
            self.__exit__(type(error), error, None)
            raise

    def __enter__(self) -> _WorkerPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        finished = exc_info[0] is None
        for process, conn in self.workers:
            with suppress(OSError):
                if finished:
                    conn.send(None)
            conn.close()  # a worker still reading sees end of file and returns
            if not finished:
                process.terminate()
        for process, _ in self.workers:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join()

    def run(self, units: Iterable[Unit], done: Done) -> Iterator[tuple[Unit, Counts]]:
        todo = iter(units)
        busy: dict[Connection, Any] = {}  # the pipes of workers running a unit -> their process

        def hand_out(conn: Connection, process: Any) -> None:
            unit = next(todo, None)
            if unit is not None:
                try:
                    conn.send(unit)
                except OSError:
                    _worker_died(process)
                busy[conn] = process

        for process, conn in self.workers:
            hand_out(conn, process)
        while busy:
            wait([*busy, *(p.sentinel for p in busy.values())])
            for conn in [c for c in busy if c.poll()]:
                process = busy.pop(conn)
                try:
                    status, unit, value = conn.recv()
                except EOFError:
                    _worker_died(process)
                if status == "error":
                    raise value
                done(1)
                hand_out(conn, process)
                yield unit, value
            for process in busy.values():
                if process.exitcode is not None:
                    _worker_died(process)


def _worker_died(process: Any) -> NoReturn:
    process.join(timeout=5)
    raise AnalogError(f"an evaluate worker process stopped (exit status {process.exitcode}) before finishing; from "
                      f"a script, call evaluate under {MAIN_GUARD} (workers re-import the main module)")


def _worker_main(conn: Connection) -> None:
    """A worker's loop: the payload, then units in, (status, unit, counts or exception) out, until
    None or end of file."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops the workers
    try:
        evaluator = Evaluator(pickle.loads(conn.recv_bytes()))
    except EOFError:
        return
    while True:
        try:
            unit = conn.recv()
        except EOFError:  # the parent is gone
            return
        if unit is None:
            return
        try:
            conn.send(("ok", unit, evaluator.run(unit)))
        except Exception as error:  # handed to the parent, which raises it
            conn.send(("error", unit, error))


def _run_ray(payload: Payload, units: Iterable[Unit], total: int, workers: int, address: str | None,
             done: Done) -> Iterator[tuple[Unit, Counts]]:
    try:
        import ray
        from ray.util import ActorPool
    except ImportError:
        raise AnalogError(f"{spelled('backend')} ray needs Ray: pip install 'analog-onnx[ray]'") from None
    started = not ray.is_initialized()
    if started:
        if address:
            _check_reachable(address)
        try:
            if address:
                ray.init(address=address, logging_level="ERROR", log_to_driver=False)
            else:  # a local cluster: at most one worker per core, as for local processes
                ray.init(num_cpus=min(workers, cores()) if workers > 1 else None, include_dashboard=False,
                         logging_level="ERROR", log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise AnalogError(f"cannot start or reach Ray{f' at {address}' if address else ''}: {e}") from None
    try:
        threads = payload.threads or 1
        count = workers if workers > 1 else max(1, int(ray.cluster_resources().get("CPU", 1)) // threads)
        payload_ref = ray.put(replace(payload, threads=threads))
        actor = ray.remote(num_cpus=threads)(_RayWorker)
        actors = min(count, total, int(ray.cluster_resources().get("CPU", 1)) // threads or 1)
        pool = ActorPool([actor.remote(payload_ref) for _ in range(actors)])
        todo = iter(units)
        for unit in itertools.islice(todo, actors):  # one unit per actor, then one more as each finishes
            pool.submit(lambda a, u: a.run.remote(u), unit)
        while pool.has_next():
            unit, counts = pool.get_next_unordered()
            done(1)
            following = next(todo, None)
            if following is not None:
                pool.submit(lambda a, u: a.run.remote(u), following)
            yield unit, counts
    finally:
        if started:
            ray.shutdown()


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast: ``ray.init`` retries an unreachable address for minutes. ``auto`` is left to Ray."""
    if address == "auto":
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise AnalogError(f"{spelled('ray_address')} {address!r} must be HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise AnalogError(f"cannot reach Ray at {address}: {e.strerror or e}") from None


class _RayWorker:
    """A Ray actor holding one evaluator (its sessions live as long as the actor)."""

    def __init__(self, payload: Payload) -> None:
        self.evaluator = Evaluator(payload)

    def run(self, unit: Unit) -> tuple[Unit, Counts]:
        return unit, self.evaluator.run(unit)
