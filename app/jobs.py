"""Worker processes seen from the GUI: a QProcess that speaks JSON lines, and the inference client.

``JsonLinesProcess`` owns one ``QProcess`` (stdout and stderr kept apart): stdout bytes are buffered
and split on newlines (the trailing partial line waits for the next read), each JSON object becomes a
``message``, anything else (and every stderr line) becomes ``text`` for the log. ``cancel()`` asks
politely (SIGTERM, plus a ``cancel`` line on stdin for Windows, where terminate() does not reach
console processes) and kills after a 3 s grace period measured by a single-shot QTimer, so the GUI
thread never blocks.

``InferenceClient`` keeps one inference worker alive (started lazily, warmed in the background),
queues requests until it is ready, matches replies by id, and turns a crash into an ``error``.
Cancelling a reconstruction terminates the worker; the next request starts a fresh one.
"""

from __future__ import annotations

import collections
import itertools
import os
import sys

from PySide6.QtCore import QObject, QProcess, QProcessEnvironment, QTimer, Signal

from .protocol import decode, encode, worker_command

CANCEL_GRACE_MS = 3000
STDERR_TAIL = 200


class JsonLinesProcess(QObject):
    message = Signal(dict)  # one JSON event from stdout
    text = Signal(str)  # any other line (stdout or stderr), for the log
    started = Signal()
    finished = Signal(int, dict)  # exit code (-1 when it crashed / was killed), the last event seen

    def __init__(
        self,
        program: str,
        args: list[str],
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.program, self.args = program, list(args)
        self.proc = QProcess(self)
        self.proc.setProcessChannelMode(QProcess.ProcessChannelMode.SeparateChannels)
        qenv = QProcessEnvironment.systemEnvironment()
        qenv.insert("PYTHONUNBUFFERED", "1")
        for k, v in (env or {}).items():
            qenv.insert(k, v)
        self.proc.setProcessEnvironment(qenv)
        if cwd:
            self.proc.setWorkingDirectory(cwd)
        self._out = bytearray()
        self._err = bytearray()
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)
        self.last_event: dict = {}
        self.cancel_requested = False
        self._done = False
        self._kill_timer = QTimer(self)
        self._kill_timer.setSingleShot(True)
        self._kill_timer.timeout.connect(self._kill_if_running)
        self.proc.readyReadStandardOutput.connect(self._read_stdout)
        self.proc.readyReadStandardError.connect(self._read_stderr)
        self.proc.finished.connect(self._on_finished)
        self.proc.errorOccurred.connect(self._on_error)
        self.proc.started.connect(self.started)

    # ---- control -----------------------------------------------------------------------------------

    def start(self) -> None:
        self.proc.start(self.program, self.args)

    def is_running(self) -> bool:
        return self.proc.state() != QProcess.ProcessState.NotRunning

    def send(self, obj: dict | str) -> None:
        if not self.is_running():
            return
        data = obj.encode() + b"\n" if isinstance(obj, str) else encode(obj)
        self.proc.write(data)

    def cancel(self, grace_ms: int = CANCEL_GRACE_MS) -> None:
        """Ask the process to stop (it may save a checkpoint), then kill it after ``grace_ms``."""
        if not self.is_running():
            return
        self.cancel_requested = True
        self.send("cancel")
        if sys.platform != "win32":
            self.proc.terminate()
        self._kill_timer.start(grace_ms)

    def kill(self) -> None:
        if self.is_running():
            self.cancel_requested = True
            self.proc.kill()

    def wait(self, msecs: int) -> bool:
        """Block until finished (only for application shutdown, never during normal use)."""
        if not self.is_running():
            return True
        return self.proc.waitForFinished(msecs)

    def _kill_if_running(self) -> None:
        if self.is_running():
            self.text.emit("worker did not stop within the grace period; killing it")
            self.proc.kill()

    # ---- reading -------------------------------------------------------------------------------------

    def _read_stdout(self) -> None:
        self._out += bytes(self.proc.readAllStandardOutput())
        self._drain(self._out, stderr=False)

    def _read_stderr(self) -> None:
        self._err += bytes(self.proc.readAllStandardError())
        self._drain(self._err, stderr=True)

    def _drain(self, buf: bytearray, stderr: bool, final: bool = False) -> None:
        while True:
            i = buf.find(b"\n")
            if i < 0:
                if final and buf:
                    i = len(buf)
                else:
                    break
            line = bytes(buf[:i])
            del buf[: i + 1]
            self._line(line, stderr)

    def _line(self, line: bytes, stderr: bool) -> None:
        text = line.decode("utf-8", "replace").rstrip("\r")
        if not text.strip():
            return
        if stderr:
            self.stderr_tail.append(text)
            self.text.emit(text)
            return
        obj = decode(text)
        if obj is None:
            self.text.emit(text)
            return
        self.last_event = obj
        self.message.emit(obj)

    def _on_finished(self, code: int, status: QProcess.ExitStatus) -> None:
        if self._done:
            return
        self._done = True
        self._kill_timer.stop()
        self._out += bytes(self.proc.readAllStandardOutput())
        self._err += bytes(self.proc.readAllStandardError())
        self._drain(self._out, stderr=False, final=True)
        self._drain(self._err, stderr=True, final=True)
        crashed = status == QProcess.ExitStatus.CrashExit
        self.finished.emit(-1 if crashed else int(code), self.last_event)

    def _on_error(self, err: QProcess.ProcessError) -> None:
        if err == QProcess.ProcessError.FailedToStart and not self._done:
            self._done = True
            self.text.emit(f"could not start {self.program} {' '.join(self.args)}: {self.proc.errorString()}")
            self.finished.emit(
                -2, {"event": "error", "message": f"could not start the worker: {self.proc.errorString()}"}
            )

    def stderr_text(self) -> str:
        return "\n".join(self.stderr_tail)


def exit_reason(code: int) -> str:
    """Readable cause for an unexpected worker exit."""
    if code == -2:
        return "the worker process could not be started"
    if code in (-1, 137, -9):
        return "the worker process was killed (out of memory, or stopped by the system)"
    if code == 139 or code == -11:
        return "the worker process crashed (segmentation fault)"
    return f"the worker process exited unexpectedly (exit code {code})"


class InferenceClient(QObject):
    """One persistent inference worker; requests by id; cancel = restart."""

    ready = Signal(dict)  # the worker's ready event (pid, backend)
    event = Signal(dict)  # every reply event (progress / partial / result / error / capabilities)
    text = Signal(str)  # worker log lines
    stopped = Signal(int)  # the worker exited (exit code)

    def __init__(
        self,
        backend: str | None = None,
        threads: int = 0,
        env: dict[str, str] | None = None,
        dev_models: dict[str, str] | None = None,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.backend = backend
        self.dev_models = dict(dev_models or {})
        self.threads = threads
        self.env = dict(env or {})
        self.job: JsonLinesProcess | None = None
        self.is_ready = False
        self._queue: list[dict] = []
        self._ids = itertools.count(1)
        self.inflight: dict[int, dict] = {}  # id → request
        self._expected_stop = False
        self._dying: list[JsonLinesProcess] = []  # cancelled workers still shutting down

    def args(self) -> list[str]:
        a = []
        if self.backend:
            a += ["--backend", self.backend]
        if self.threads:
            a += ["--threads", str(self.threads)]
        for name, folder in self.dev_models.items():
            a += ["--dev-model", f"{name}={folder}"]
        return a

    def ensure_started(self) -> None:
        if self.job is not None and self.job.is_running():
            return
        program, args = worker_command("inference", self.args())
        self.is_ready = False
        self._expected_stop = False
        job = JsonLinesProcess(program, args, env=self.env, parent=self)
        job.message.connect(lambda msg, j=job: self._on_message(j, msg))
        job.text.connect(self.text)
        job.finished.connect(lambda code, last, j=job: self._on_finished(j, code))
        self.job = job
        self.text.emit(f"starting model worker: {os.path.basename(program)} {' '.join(args)}")
        job.start()

    def request(self, cmd: str, **fields) -> int:
        rid = next(self._ids)
        req = {"cmd": cmd, "id": rid, **fields}
        if cmd != "capabilities":
            self.inflight[rid] = req
        self.ensure_started()
        if self.is_ready:
            self.job.send(req)
        else:
            self._queue.append(req)
        return rid

    def cancel(self) -> list[int]:
        """Stop everything in flight by ending the worker; returns the cancelled request ids."""
        ids = list(self.inflight)
        self.inflight.clear()
        self._queue = [r for r in self._queue if r["cmd"] == "capabilities"]
        job, self.job, self.is_ready = self.job, None, False
        if job is not None and job.is_running():
            job.cancel(grace_ms=1000)  # detached: its exit is not a crash, and new requests get a new worker
            self._dying.append(job)
        return ids

    def shutdown(self, wait_ms: int = 2000) -> None:
        """Quit the worker at application exit (blocking briefly is fine then)."""
        self.inflight.clear()
        self._queue.clear()
        for dying in self._dying:
            if dying.is_running() and not dying.wait(1000):
                dying.proc.kill()
                dying.wait(1000)
        self._dying.clear()
        job = self.job
        if job is None or not job.is_running():
            return
        self._expected_stop = True
        job.send({"cmd": "quit"})
        if not job.wait(wait_ms // 2):
            job.proc.terminate()
            if not job.wait(wait_ms // 2):
                job.proc.kill()
                job.wait(1000)

    @property
    def busy(self) -> bool:
        return bool(self.inflight)

    def _on_message(self, job: JsonLinesProcess, msg: dict) -> None:
        if job is not self.job:  # late output of a cancelled worker
            return
        ev = msg.get("event")
        if ev == "ready":
            self.is_ready = True
            queue, self._queue = self._queue, []
            for req in queue:
                self.job.send(req)
            self.ready.emit(msg)
            return
        if ev == "error" and msg.get("fatal"):
            # the worker cannot serve at all (e.g. broken install): fail everything queued
            for rid in list(self.inflight) + [r["id"] for r in self._queue]:
                self.event.emit({**msg, "id": rid})
            self.inflight.clear()
            self._queue.clear()
            self.event.emit(msg)
            return
        rid = msg.get("id")
        if ev in ("result", "error") and rid in self.inflight:
            del self.inflight[rid]
        self.event.emit(msg)

    def _on_finished(self, job: JsonLinesProcess, code: int) -> None:
        if job is not self.job:  # a cancelled (detached) worker
            if job in self._dying:
                self._dying.remove(job)
            job.deleteLater()
            return
        self.is_ready = False
        if not self._expected_stop:
            details = job.stderr_text()
            for rid in list(self.inflight):
                self.event.emit(
                    {
                        "event": "error",
                        "id": rid,
                        "kind": "WorkerCrash",
                        "message": exit_reason(code),
                        "hint": "see the log for the worker's output",
                        "traceback": details,
                    }
                )
            self.inflight.clear()
        self.stopped.emit(code)
        job.deleteLater()
        self.job = None
        if self._queue:  # capability requests queued during a restart
            self.ensure_started()
