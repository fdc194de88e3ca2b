"""Following an arm on the cluster: poll the sources' Job until it completes, fails or
times out, and report a pod that cannot start (an image that cannot be pulled,
nowhere to schedule it) with its events instead of waiting on it."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from .cluster import Cluster, ClusterError, instance_selector

POLL_S = 5.0
STUCK_REASONS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
                 "CreateContainerError", "CrashLoopBackOff"}


@dataclass
class JobState:
    succeeded: int = 0
    failed: int = 0
    active: int = 0
    complete: bool = False
    stuck: list[str] = field(default_factory=list)


def job_state(cluster: Cluster, release: str, *, pending_limit_s: float, now: float) -> JobState:
    job = cluster.source_job(release)
    status = job.status
    state = JobState(status.succeeded or 0, status.failed or 0, status.active or 0)
    state.complete = any(c.type == "Complete" and c.status == "True" for c in (status.conditions or []))
    for pod in cluster.pods(release):
        reason = _waiting_reason(pod)
        created = pod.metadata.creation_timestamp.timestamp() if pod.metadata.creation_timestamp else now
        pending_too_long = pod.status.phase == "Pending" and now - created > pending_limit_s
        if reason in STUCK_REASONS or pending_too_long:
            events = "; ".join(cluster.pod_events(pod.metadata.name)[-3:]) or "no events"
            state.stuck.append(f"pod {pod.metadata.name} is {reason or 'Pending'} "
                               f"for {now - created:.0f} s ({events})")
    return state


def _waiting_reason(pod) -> str | None:
    for container in pod.status.container_statuses or []:
        waiting = container.state.waiting if container.state else None
        if waiting is not None and waiting.reason:
            return waiting.reason
    return None


def follow(cluster: Cluster, release: str, sources: int, *, timeout_s: float, pending_limit_s: float = 300.0,
           say=print, clock=time.time, sleep=time.sleep) -> None:
    """Wait for the sources' Job to complete; raise ClusterError on failure or timeout."""
    deadline = clock() + timeout_s
    last = None
    while True:
        state = job_state(cluster, release, pending_limit_s=pending_limit_s, now=clock())
        if state.stuck:
            raise ClusterError("; ".join(state.stuck))
        if state.failed:
            raise ClusterError(f"{state.failed} of {sources} source pods failed (see their logs: "
                               f"kubectl logs -l {instance_selector(release, 'source')})")
        progress = (state.active, state.succeeded)
        if progress != last:
            say(f"  [{release}] sources: {state.active} running, {state.succeeded} of {sources} done")
            last = progress
        if state.complete or state.succeeded >= sources:
            return
        if clock() >= deadline:
            raise ClusterError(f"timed out after {timeout_s:.0f} s waiting for release {release}: "
                               f"{state.succeeded} of {sources} sources done")
        sleep(POLL_S)
