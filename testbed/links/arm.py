"""One arm's emulated links, as the local backend uses them: build the network, record
the link and the sources' interface counters in ``<arm>/link.jsonl``, run the link
controller beside the sources, and take everything down again."""
from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

from workloads import events

from .network import SERVER_ADDRESS, Network, NetworkError, source_address
from .plan import LinkPlan

CONTROLLER = "link-controller"
CONTROLLER_STOP_S = 5.0


def profile_delay_warning(plan: LinkPlan, kernel: dict) -> str | None:
    """The warning (errors.warn prefixes it) a run gives when its profile's delay cannot be emulated here."""
    if plan.profile_delay_ms and not kernel.get("netem"):
        return (f"the {plan.profile} profile's {plan.profile_delay_ms:g} ms delay is not emulated: "
                "this kernel has no netem qdisc (rate and medium are)")
    return None


class ArmLinks:
    """``build`` -> the processes start (``server_join``/``source_join`` in their preexec)
    -> ``start_controller`` -> the sources end -> ``finish`` ; ``remove`` always."""

    def __init__(self, plan: LinkPlan, kernel: dict, directory: Path):
        self.plan, self.kernel, self.directory = plan, kernel, directory
        self.network = Network(plan, netem=bool(kernel.get("netem")))
        self.path = directory / "link.jsonl"
        self.controller: subprocess.Popen | None = None

    @property
    def server_address(self) -> str:
        return SERVER_ADDRESS

    def build(self) -> None:
        self.network.build()
        facts = self.plan.describe()
        delay_emulated = bool(self.kernel.get("netem"))
        for entry, source in zip(facts["sources"], self.plan.sources):  # the delay each source's link got
            entry.update(interface="eth0", address=source_address(entry["source"]),
                         delay_ms=self.plan.delay_ms(source, delay_emulated))
        self._event(events.LINK, **facts, server_address=SERVER_ADDRESS,
                    kernel={"qdiscs": self.kernel.get("qdiscs", []), "netem": delay_emulated},
                    delay_emulated=delay_emulated or not (self.plan.profile_delay_ms or self.plan.needs_netem),
                    namespaces={"hub": self.network.hub, "server": self.network.server_ns,
                                "sources": self.network.source_ns})
        self._counters("start")

    def server_join(self):
        return self.network.server_join()

    def source_join(self, index: int):
        return self.network.source_join(index)

    def controller_argv(self) -> list[str]:
        """The controller's plan, written beside the trace; its argv."""
        schedules = {}
        if self.plan.trace_up is not None:
            if self.plan.duplex == "half":
                schedules["both"] = _schedule(self.plan.trace_up)
            else:
                schedules["up"] = _schedule(self.plan.trace_up)
                schedules["down"] = _schedule(self.plan.trace_down)
        plan = {"out": str(self.path), "shapers": self.network.shapers, "schedules": schedules,
                "sources": [{"source": s.source, "namespace": ns}
                            for s, ns in zip(self.plan.sources, self.network.source_ns)]}
        path = self.directory / "link-plan.json"
        path.write_text(json.dumps(plan, indent=1) + "\n")
        return [str(path)]

    def stop_controller(self, proc: subprocess.Popen | None, log_tail: str = "") -> None:
        """SIGTERM: it records a last sample and exits 0. A controller that had already
        ended, or ends otherwise, failed the run: the link stopped following its trace and
        the counters stopped (NetworkError, naming its exit and its log's last lines)."""
        if proc is None:
            return
        ended_before = proc.poll() is not None
        if not ended_before:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=CONTROLLER_STOP_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if ended_before or proc.returncode != 0:
            raise NetworkError(f"the link controller {'died during the arm' if ended_before else 'failed'} "
                               f"(exit status {proc.returncode}): {log_tail() if callable(log_tail) else log_tail}")

    def finish(self) -> None:
        self._counters("end")

    def remove(self) -> None:
        self.network.remove()

    def _counters(self, phase: str) -> None:
        for s in self.plan.sources:
            self._event(events.NIC, source=s.source, phase=phase, **self.network.counters(s.source))

    def _event(self, kind: str, **fields) -> None:
        events.check(events.ROLE_LINK, kind)
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(json.dumps({"t": round(time.time(), 6), "event": kind, **fields}, separators=(",", ":")) + "\n")


def _schedule(schedule) -> dict:
    return {"rates": list(schedule.rates), "bin_s": schedule.bin_s, "repeat": schedule.repeat}
