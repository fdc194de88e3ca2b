"""Every pod's log, streamed into the run directory while the arm runs.

Traces live only in container logs on a cluster, and container logs do not keep: the
kubelet rotates them (10 MiB by default) and the log API then returns only the newest
file; a restarted container's earlier log is one ``previous=True`` away and the one
before it is gone; a pod the Job controller deletes takes its log with it. So the
backend does not read the logs after the run: a thread per pod follows its log
(``follow=True``, ``timestamps=True``, unbuffered) from the moment the pod is seen,
appending every line to ``<arm>/_stream/<pod>.log``. A stream that ends (the container
exited, the connection dropped, the read timed out) is opened again from just before
the last line kept (``since_seconds``), and the kubelet's timestamps say which lines
are already kept, so nothing is written twice. When the container was restarted, the
rest of the earlier one's log is read with ``previous=True`` before the new one is
followed. ``finish()`` stops following once the arm is over (a running server
included), after one last read of what is left, so that collection reads every pod's
whole log from the run directory, before anything is uninstalled."""
from __future__ import annotations

import datetime as dt
import math
import re
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from analysis.jsonl import parse
from workloads import events as declared

from .cluster import Cluster, ClusterError
from .collect import lost_event, trace_of

STREAM_READ_S = 30.0   # a follow that brings nothing for this long is opened again
RETRY_S = 5.0          # a pod whose log cannot be read yet (container creating) is tried again
SKEW_S = 60            # margin for clock skew between this machine and the nodes (since_seconds)
FINISH_S = 120.0       # how long finish() waits for the last reads
QUIET_S = 2.0          # at the end, a follow that brought nothing for this long is caught up
CHUNK = 64 * 1024
REQUEST_CONNECT_S = 15
READ_S = 300.0         # a whole log read at once
STAMP = re.compile(rb"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d) ")


def stamp_ns(line: bytes) -> tuple[int | None, bytes]:
    """(nanoseconds since the epoch, the line without its timestamp) of a log line read
    with ``timestamps=True`` (RFC3339 or RFC3339Nano); (None, line) when it has none."""
    match = STAMP.match(line)
    if not match:
        return None, line
    zone = "+00:00" if match.group(3) == b"Z" else match.group(3).decode()
    seconds = int(dt.datetime.fromisoformat(match.group(1).decode() + zone).timestamp())
    fraction = (match.group(2) or b"").decode().ljust(9, "0")
    return seconds * 1_000_000_000 + int(fraction), line[match.end():]


def restarts(pod) -> int:
    statuses = (pod.status.container_statuses or []) if pod is not None and pod.status else []
    return max((s.restart_count or 0 for s in statuses), default=0)


def terminal(pod) -> bool:
    return pod is None or (pod.status is not None and pod.status.phase in ("Succeeded", "Failed"))


class PodLog:
    """One pod's log, followed by a thread of its own into ``path``."""

    def __init__(self, cluster: Cluster, pod, path: Path):
        self.cluster, self.pod, self.path = cluster, pod, path
        self.name = pod.metadata.name
        containers = pod.spec.containers if pod.spec and pod.spec.containers else []
        self.container = containers[0].name if containers else None
        self.last_ns, self.at_last = -1, 0  # the newest line kept, and how many kept lines carry its stamp
        self.instance: int | None = None    # restartCount of the container being followed
        self.gone = False                   # no longer listed (deleted)
        self.problems: list[str] = []
        self.stopping = False
        self.changed = threading.Event()
        self._seen_at_last = 0              # lines with the newest stamp met by the current request
        self._response = None               # the follow in progress (interrupt() ends its read)
        self.last_data = time.monotonic()   # when the last chunk came
        self._out = open(path, "ab")
        self._thread = threading.Thread(target=self._run, name=f"log {self.name}", daemon=True)
        self._thread.start()

    # -- told by the streamer ----------------------------------------------------------
    def update(self, pod) -> None:
        if pod is None:
            self.gone = True
        else:
            self.pod = pod
        self.changed.set()

    def stop(self) -> None:
        """No new follow after this; the one in progress reads on until ``interrupt()``
        (or its end): what it has not carried yet may be rotated away already."""
        self.stopping = True
        self.changed.set()

    def interrupt(self) -> None:
        """End the follow in progress (a running pod's, caught up: nothing came for a while)."""
        response = self._response
        if response is not None and hasattr(response, "shutdown"):  # urllib3 >= 2.3: wakes a blocked read
            try:
                response.shutdown()
            except Exception:
                pass

    def alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- the thread -------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                self.changed.clear()
                pod, count = self.pod, restarts(self.pod)
                if self.instance is None and count > 0 or self.instance is not None and count > self.instance:
                    # the container was restarted: the rest of the one before, then the new one
                    seen = 0 if self.instance is None else self.instance + 1
                    if count - 1 > seen:
                        self.problems.append(f"pod {self.name}: {count - 1 - seen} container restart(s) came and "
                                             f"went between two looks; their log is gone")
                    self._read(previous=True)
                self.instance = count
                if self.stopping or self.gone or terminal(pod):
                    self._read()  # whatever is left
                    return
                # after a follow ends (the container exited, the read timed out) the pod's next state
                # is awaited briefly; a log not readable yet (container creating) is tried again later
                self.changed.wait(1.0 if self._read(follow=True) else RETRY_S)
        except Exception as exc:  # never let a log thread die silently: say so at collection
            self.problems.append(f"pod {self.name}: following its log failed ({type(exc).__name__}: {exc})")
        finally:
            self._out.close()

    def _read(self, *, follow: bool = False, previous: bool = False) -> bool:
        """One request for the log; every line newer than the last one kept is appended.
        False when the log cannot be read (the reason is kept for a last attempt's report)."""
        kwargs = {"timestamps": True, "_preload_content": False}
        if self.container:
            kwargs["container"] = self.container
        if follow:
            kwargs["follow"] = True
        if previous:
            kwargs["previous"] = True
        if self.last_ns >= 0 and not previous:
            kwargs["since_seconds"] = max(1, math.ceil(time.time() - self.last_ns / 1e9) + SKEW_S)
        timeout = (REQUEST_CONNECT_S, STREAM_READ_S if follow else READ_S)
        try:
            response = self.cluster.call(f"reading the log of pod {self.name}",
                                         self.cluster.core.read_namespaced_pod_log, self.name, self.cluster.namespace,
                                         timeout=timeout, **kwargs)
        except ClusterError as exc:
            if not follow:
                self.problems.append(str(exc))
            return False
        pending, self._seen_at_last = b"", 0
        self.last_data = time.monotonic()
        if follow:
            self._response = response
        try:
            for chunk in _chunks(response):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    self._keep(line)
                self.last_data = time.monotonic()
        except Exception:  # a dropped connection or a read timeout: the next request goes on from here
            pass
        finally:
            self._response = None
            _close(response)
        if pending and not follow:  # a last line without its newline: only once nothing more can come
            self._keep(pending)
        self._out.flush()
        return True

    def _keep(self, line: bytes) -> None:
        stamp, text = stamp_ns(line)
        if stamp is not None:
            if stamp < self.last_ns:
                return
            if stamp == self.last_ns:
                self._seen_at_last += 1
                if self._seen_at_last <= self.at_last:
                    return
                self.at_last += 1
            else:
                self.last_ns, self.at_last, self._seen_at_last = stamp, 1, 1
        self._out.write(text + b"\n")



def _chunks(response):
    """The body of a log response as it arrives (a urllib3 response streams)."""
    if hasattr(response, "stream"):
        yield from response.stream(CHUNK, decode_content=True)
    else:
        data = response.read() if hasattr(response, "read") else response
        yield data.encode() if isinstance(data, str) else data


def _close(response) -> None:
    for name in ("release_conn", "close"):
        try:
            getattr(response, name, lambda: None)()
        except Exception:
            pass


class LogStreamer:
    """Every pod of one release, each followed into ``folder/<pod>.log`` from the moment it
    is first listed. ``update(pods)`` is called with each listing (the follow loop's);
    ``finish()`` ends following after a last read."""

    def __init__(self, cluster: Cluster, folder: Path):
        self.cluster, self.folder = cluster, folder
        self.logs: dict[str, PodLog] = {}
        self.pods: dict[str, object] = {}  # the last state seen of every pod, deleted ones included
        self._lock = threading.Lock()

    def update(self, pods) -> None:
        with self._lock:
            listed = {p.metadata.name: p for p in pods}
            for name, pod in listed.items():
                self.pods[name] = pod
                if name in self.logs:
                    self.logs[name].update(pod)
                else:
                    self.folder.mkdir(parents=True, exist_ok=True)
                    self.logs[name] = PodLog(self.cluster, pod, self.folder / f"{name}.log")
            for name, log in self.logs.items():
                if name not in listed:
                    log.update(None)

    def finish(self, pods=None, timeout_s: float = FINISH_S) -> list[str]:
        """Stop following (after one last read of each log); the problems met, one line each."""
        if pods is not None:
            self.update(pods)
        with self._lock:
            logs = list(self.logs.values())
        for log in logs:
            log.stop()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(log.alive() for log in logs):
            for log in logs:  # a follow that is caught up (nothing came for a while) is ended
                if log.alive() and time.monotonic() - log.last_data > QUIET_S:
                    log.interrupt()
            time.sleep(0.05)
        problems = []
        for log in logs:
            if not log.join(0.0):
                problems.append(f"pod {log.name}: its log was still being read after {timeout_s:.0f} s")
            problems += log.problems
        return problems

    def text(self, name: str) -> str | None:
        """The streamed log of pod ``name`` (None when it was never followed)."""
        path = self.folder / f"{name}.log"
        return path.read_text(errors="replace") if name in self.logs and path.exists() else None


class StreamFeed:
    """The pod logs streamed into ``folder`` (``<arm>/_stream/<pod>.log``), each complete
    line once, a kubelet timestamp before it stripped; the JSON ones with an ``event``
    are trace events: the live view's feed on a cluster (testbed/armview.py's model). ``pods()``: the pods seen so far by name (the streamer's ``pods``);
    a source pod that failed yields the ``lost`` event collection will write for it."""

    def __init__(self, folder: Path, pods: Callable[[], dict] | None = None):
        self.folder, self.pods = folder, pods or dict
        self.offsets: dict[str, int] = {}
        self.ends: dict[int, list[dict]] = {}   # a source's end and drop events (a lost event's cause)
        self.failed: set[int] = set()

    def __call__(self) -> Iterator[tuple[str, int | None, dict]]:
        pods = dict(self.pods())
        for path in sorted(self.folder.glob("*.log")) if self.folder.is_dir() else []:
            whose = trace_of(pods[path.stem]) if path.stem in pods else ("", None)  # ("", None): the envelope's
            if whose is None:
                continue  # not a pod of the arm's programs
            for line in self._new_lines(path):
                event = parse(stamp_ns(line)[1].strip())
                if event is None or "event" not in event:
                    continue  # a line of the program's own output, not a trace event
                role = whose[0] or event.get("role")
                if not role:
                    continue
                index = whose[1] if whose[1] is not None else event.get("source")
                if role == declared.ROLE_SOURCE and event.get("event") in (declared.END, declared.DROP):
                    self.ends.setdefault(index, []).append(event)
                yield role, index, event
        yield from self._lost(pods)

    def _new_lines(self, path: Path) -> list[bytes]:
        start = self.offsets.get(path.name, 0)
        try:
            with open(path, "rb") as f:
                f.seek(start)
                data = f.read()
        except OSError:
            return []
        data = data[:data.rfind(b"\n") + 1]  # a line still being written: next time
        self.offsets[path.name] = start + len(data)
        return [line for line in data.split(b"\n") if line.strip()]

    def _lost(self, pods: dict) -> Iterator[tuple[str, int | None, dict]]:
        for pod in pods.values():
            whose = trace_of(pod)
            status = getattr(pod, "status", None)
            if not whose or whose[0] != declared.ROLE_SOURCE or whose[1] is None or whose[1] in self.failed \
                    or getattr(status, "phase", None) != "Failed":
                continue
            self.failed.add(whose[1])
            try:
                event = lost_event(pod, whose[1], self.ends.get(whose[1], []))
            except ClusterError:  # it ended because the server is gone: its end event says so
                continue
            yield declared.ROLE_TESTBED, whose[1], event
