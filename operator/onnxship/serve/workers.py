"""`onnxship serve --workers N`: N worker processes in one pod, and the supervisor over them.

One Python process tops out at one event loop and one GIL: about 3k requests/s however many
cores the pod has. Here each worker is a whole `onnxship serve` (``server.serve``) with its
own loop and ONNX Runtime session, and all of them listen on the same HTTP and gRPC ports
with SO_REUSEPORT, so the kernel spreads connections over them.

The supervisor loads no model. It checks the provider, fetches the artifact once, reserves
the ports (so "port in use" is one clear error, and port 0 one port for all), prepares the
model copy the workers share (``session.prepare_shared_model``), forks the workers, and then
only watches: SIGTERM/SIGINT are forwarded (each worker drains as one server does), a worker
that dies ends the pod with a non-zero status and a log line naming it (Kubernetes restarts
the container; nothing is restarted here), and it exits with the workers' status.

Workers are forked from the supervisor after it has imported everything a worker runs
(ONNX Runtime, numpy, aiohttp, grpc, this package) and frozen those objects out of the garbage
collector's reach (``gc.freeze``): a started interpreter with these imports holds ~50 MiB of
its own, a forked one shares them copy-on-write (MiniLM: +8 MiB private per process instead of
+26 in a bare test). The supervisor has created no ONNX Runtime session, gRPC object or event
loop when it forks, so each worker creates its own, as a fresh process would.

Causal LMs default to one worker: their concurrency is the decode batch, and every worker
would hold its own weights and KV cache.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import FrameType

from onnxship.logs import JsonFormatter, configure_logging

from .. import eventloop
from .config import ServeConfig
from .errors import StartupError
from .llm import causal_lm_folder
from .loader import resolve_model_file
from .pod import PodFolder, PodMember
from .server import serve
from .session import check_provider, cpu_limit, prepare_shared_model

log = logging.getLogger(__name__)

POLL_S = 0.05
# After the workers' own grace period: how long they get to exit before SIGKILL.
EXIT_MARGIN_S = 10.0


def worker_count(config: ServeConfig, causal_lm: bool) -> int:
    """``--workers``, or for 0: one per CPU of the limit, one for a causal LM."""
    if config.workers:
        return config.workers
    return 1 if causal_lm else cpu_limit()


def worker_threads(config: ServeConfig, workers: int) -> int:
    """``--threads`` per worker; 0 splits the CPU limit between the workers (1 at least)."""
    return config.threads or max(1, cpu_limit() // workers)


def run_pod(config: ServeConfig) -> int:
    """Serve with ``worker_count`` processes; the exit status (0 after SIGTERM)."""
    check_provider(config)  # before anything starts: one error, not one per worker
    model_file = resolve_model_file(config)  # fetched once, not by every worker
    causal_lm = causal_lm_folder(model_file) is not None
    local = config.model_copy(
        update={
            "model_path": model_file,
            "store_uri": None,
            "cache_key": None,
            "store_endpoint": None,
            "store_region": None,
        }
    )
    workers = worker_count(config, causal_lm)
    if workers == 1:
        eventloop.run(serve(local.model_copy(update={"workers": 1})))
        return 0
    if causal_lm:
        log.warning(
            "several workers for a causal LM: each holds its own weights and KV cache",
            extra={"workers": workers},
        )
    return Supervisor(local, workers, causal_lm).run()


class Worker:
    def __init__(self, index: int, pid: int) -> None:
        self.index = index
        self.pid = pid
        self.returncode: int | None = None  # as subprocess reports it: -N when killed by N
        self.reported = False  # its exit was handled

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: it is gone, how is unknown
                self.returncode = 1
            else:
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


class Supervisor:
    def __init__(self, config: ServeConfig, workers: int, causal_lm: bool) -> None:
        self.config = config
        self.workers = workers
        self.causal_lm = causal_lm
        self.stopping = False
        self.prepare: subprocess.Popen[bytes] | None = None
        self.forked: list[Worker] = []
        self.pid = os.getpid()

    def run(self) -> int:
        folder = PodFolder(Path(tempfile.mkdtemp(prefix="onnxship-pod-")))
        holders: list[socket.socket] = []
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            folder.create()
            config = self._reserve_ports(holders).model_copy(
                update={"workers": 1, "threads": worker_threads(self.config, self.workers)}
            )
            if config.execution_provider.upper() in ("CPU", "CPUEXECUTIONPROVIDER") and not (
                self.causal_lm
            ):
                config = self._prepare(config, folder)
            if self.stopping:
                return 0
            return self._watch(config, folder, holders)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            # Only after an error of our own: normally every child has exited by now.
            if self.prepare is not None and self.prepare.poll() is None:
                self.prepare.kill()
                self.prepare.wait()
            for w in self.forked:
                if w.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(w.pid, signal.SIGKILL)
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(w.pid, 0)
            for sock in holders:
                sock.close()
            shutil.rmtree(folder.root, ignore_errors=True)

    # ------------------------------------------------------------------ start-up

    def _reserve_ports(self, holders: list[socket.socket]) -> ServeConfig:
        """Check that nobody listens on the ports, then hold them (bound, not listening,
        SO_REUSEPORT) until the workers are gone: port 0 becomes one port for every worker,
        and no other server slips in meanwhile. The holders take no connections: only
        listening sockets are in the kernel's SO_REUSEPORT group."""
        c = self.config
        http = _reserve(c.host, c.http_port, holders, f"cannot listen on {c.host}:{c.http_port}")
        update: dict[str, int | None] = {"http_port": http}
        if c.grpc_port is not None:
            where = f"cannot listen for gRPC on {c.host}:{c.grpc_port}"
            update["grpc_port"] = _reserve(c.host, c.grpc_port, holders, where)
        return c.model_copy(update=update)

    def _prepare(self, config: ServeConfig, folder: PodFolder) -> ServeConfig:
        """The shared model copy, made by a short-lived process (the supervisor, which the
        workers are forked from, must hold no session and stay small).

        A model ONNX Runtime cannot load fails here, once, with ONNX Runtime's message."""
        folder.config_file.write_text(config.model_dump_json())
        start = time.perf_counter()
        root = logging.getLogger()
        env = {
            **os.environ,
            "ONNXSHIP_LOG_LEVEL": logging.getLevelName(root.level),
            "ONNXSHIP_LOG_FORMAT": "json"
            if any(isinstance(h.formatter, JsonFormatter) for h in root.handlers)
            else "text",
        }
        cmd = [sys.executable, "-m", __name__, "prepare", str(folder.root)]
        self.prepare = proc = subprocess.Popen(cmd, env=env)
        while (rc := proc.poll()) is None:
            time.sleep(POLL_S)
        if self.stopping:
            return config
        if rc != 0:
            failure = folder.failure("prepare")
            if failure is not None:
                raise failure
            raise StartupError(f"preparing the model for {self.workers} workers failed (exit {rc})")
        shared = folder.shared_dir / "model.onnx"
        size = sum(f.stat().st_size for f in folder.shared_dir.iterdir())
        log.info(
            "prepared the model the workers share",
            extra={"bytes": size, "seconds": round(time.perf_counter() - start, 3)},
        )
        return config.model_copy(update={"shared_model": shared})

    def _fork(
        self, index: int, config: ServeConfig, folder: PodFolder, holders: list[socket.socket]
    ) -> Worker:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        pid = os.fork()
        if pid == 0:  # the worker: it never returns into the supervisor's code
            code = 1
            try:
                code = _worker(index, self.workers, config, folder, holders, self.pid)
            except BaseException:
                traceback.print_exc()  # a bug: say where
            finally:
                logging.shutdown()
                for stream in (sys.stdout, sys.stderr):
                    with contextlib.suppress(Exception):
                        stream.flush()
                os._exit(code)
        worker = Worker(index, pid)
        self.forked.append(worker)
        return worker

    # ------------------------------------------------------------------ running

    def _watch(
        self, config: ServeConfig, folder: PodFolder, holders: list[socket.socket]
    ) -> int:
        start = time.perf_counter()
        # What the supervisor imported and built so far is the workers' too: out of the
        # collector's reach, its pages stay shared instead of being touched by every cycle.
        gc.collect()
        gc.freeze()
        workers = [self._fork(i, config, folder, holders) for i in range(self.workers)]
        log.info(
            "started workers",
            extra={
                "workers": self.workers,
                "pids": ",".join(str(w.pid) for w in workers),
                "threads_each": config.threads,
                "http_port": config.http_port,
                "grpc_port": config.grpc_port,
                "shared_model": config.shared_model is not None,
            },
        )
        announced = False
        status = 0
        deadline: float | None = None
        while True:
            if self.stopping and deadline is None:
                deadline = time.monotonic() + config.grace_period_s + EXIT_MARGIN_S
                self._forward(signal.SIGTERM)  # again: a signal during the forks missed some
            running = [w for w in workers if w.poll() is None]
            for w in workers:
                rc = w.returncode
                if rc is None or w.reported:
                    continue
                w.reported = True
                _mark_dead(folder, w.pid)
                if self.stopping:
                    # -SIGTERM: stopped before it had installed its handler (still starting),
                    # so with nothing in flight; a clean stop as far as the pod goes.
                    if rc not in (-signal.SIGTERM, -signal.SIGINT):
                        status = status or _status(rc)
                    continue
                # A worker ended on its own: the pod cannot serve as promised any more.
                self.stopping = True
                self._forward(signal.SIGTERM)
                failure = None if announced else folder.failure(str(w.index))
                if failure is not None:
                    self._wait_all(workers, config.grace_period_s + EXIT_MARGIN_S)
                    raise failure
                status = _status(rc) or 1
                log.error(
                    f"worker {w.index} (pid {w.pid}) {_how(rc)}: stopping the pod "
                    f"(exit {status}; the other workers drain, nothing is restarted here)",
                    extra={"worker": w.index, "pid": w.pid, "returncode": rc},
                )
            if not running:
                break
            if not announced and not self.stopping and folder.ready_count() >= self.workers:
                announced = True
                log.info(
                    "pod ready",
                    extra={
                        "workers": self.workers,
                        "seconds": round(time.perf_counter() - start, 3),
                    },
                )
            if deadline is not None and time.monotonic() > deadline:
                for w in running:
                    log.error("worker did not stop in time: killed", extra={"worker": w.index})
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(w.pid, signal.SIGKILL)
                status = status or 1
            time.sleep(POLL_S)
        log.info("stopped", extra={"workers": self.workers, "status": status})
        return status

    def _wait_all(self, workers: list[Worker], timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end and any(w.poll() is None for w in workers):
            time.sleep(POLL_S)
        for w in workers:
            if w.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.pid, signal.SIGKILL)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self.pid:
            # A worker between its fork and its own handlers: nothing in flight yet, so it
            # stops as a process that had not started (the supervisor counts that as clean).
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if not self.stopping:
            log.info(
                "stopping: every worker drains its requests",
                extra={"signal": signal.Signals(signum).name},
            )
        self.stopping = True
        self._forward(signal.SIGTERM)

    def _forward(self, sig: signal.Signals) -> None:
        if self.prepare is not None and self.prepare.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.prepare.send_signal(sig)
        for w in self.forked:
            if w.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.pid, sig)


def _reserve(host: str, port: int, holders: list[socket.socket], error: str) -> int:
    try:
        family, _, _, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise StartupError(f"{error}: {exc.strerror}", kind="failure") from None
    if port != 0:
        # Without SO_REUSEPORT this bind fails if anyone listens there, another pod's
        # workers included (theirs would otherwise share the port with ours).
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(addr)
            except OSError as exc:
                raise StartupError(f"{error}: {exc.strerror}", kind="failure") from None
    holder = socket.socket(family, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        holder.bind(addr)
    except OSError as exc:
        holder.close()
        raise StartupError(f"{error}: {exc.strerror}", kind="failure") from None
    holders.append(holder)
    return int(holder.getsockname()[1])


def _status(rc: int) -> int:
    """A child's return code as a shell reports it: 128 + N when killed by signal N."""
    return 128 - rc if rc < 0 else rc


def _how(rc: int) -> str:
    if rc < 0:
        try:
            return f"was killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"was killed by signal {-rc}"
    return f"exited with code {rc}"


def _mark_dead(folder: PodFolder, pid: int) -> None:
    from prometheus_client import multiprocess

    with contextlib.suppress(OSError):
        multiprocess.mark_process_dead(pid, str(folder.metrics_dir))


# ---------------------------------------------------------------------- the child processes


def _die_with_parent(parent: int) -> bool:
    """SIGTERM this process when the supervisor dies, even by SIGKILL (Linux): an orphaned
    worker would go on answering on the shared port. False if it is already gone."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    return os.getppid() == parent


class _WorkerField(logging.Filter):
    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.index
        return True


def _worker(
    index: int,
    workers: int,
    config: ServeConfig,
    folder: PodFolder,
    holders: list[socket.socket],
    supervisor: int,
) -> int:
    """A forked worker's life: one server, this pod's member. Returns its exit status.

    The supervisor's objects stay frozen (``gc.freeze``): collecting them would write to
    every one of them and copy the pages this worker shares."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)  # until serve's loop takes them over
    if not _die_with_parent(supervisor):
        return 1
    for sock in holders:
        sock.close()
    # prometheus_client picks its value store when a metric is created: from now on, files in
    # the pod's folder, which whichever worker answers /metrics reads.
    from prometheus_client import values

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder.metrics_dir)
    values.ValueClass = values.MultiProcessValue()
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WorkerField(index))
    if index > 0:
        # Every worker warms up the same model on the same inputs: worker 0 says how it went,
        # once for the pod (a failed made-up warm-up is a warning a user reads, not N of them).
        logging.getLogger("onnxship.serve.warmup").setLevel(logging.ERROR)
    member = PodMember(folder, index, workers)
    try:
        eventloop.run(serve(config, pod=member))
    except StartupError as exc:
        # The supervisor reports it once for the pod, with the CLI's exit code for its kind.
        folder.record_failure(str(index), exc)
        return 1
    return 0


def _prepare_main(root: str) -> int:
    """``python -m onnxship.serve.workers prepare DIR``: write the shared model copy."""
    configure_logging(
        os.environ.get("ONNXSHIP_LOG_LEVEL", "INFO"), os.environ.get("ONNXSHIP_LOG_FORMAT", "auto")
    )
    folder = PodFolder(Path(root))
    config = ServeConfig.model_validate_json(folder.config_file.read_text())
    assert config.model_path is not None  # the supervisor resolved it
    try:
        prepare_shared_model(config.model_path, config, folder.shared_dir)
    except StartupError as exc:
        folder.record_failure("prepare", exc)
        return 1
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group
        return 130
    return 0


if __name__ == "__main__":
    parent = os.getppid()
    if not _die_with_parent(parent):
        sys.exit(1)
    sys.exit(_prepare_main(sys.argv[2]))
