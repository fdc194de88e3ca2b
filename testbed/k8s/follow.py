"""Following an arm on the cluster: poll the sources' Job (or Jobs: one per source when
the sources are on different links) until every source pod has
ended (succeeded or failed) or the wait times out, and report a pod that cannot start
(an image that cannot be pulled, nowhere to schedule it) with its events instead of
waiting on it: at once when it can never start (an invalid image name, a missing
ConfigMap or Secret key, a crash loop), after ``--pending-timeout`` when it still
waits (unscheduled, an image still pulling or in pull back-off: a transient
``ErrImagePull`` is not fatal). A failed source pod does not end the arm: the chart's Job gives each
index one try (``backoffLimitPerIndex: 0``) and tolerates every index failing
(``maxFailedIndexes``), or each source has a Job of its own (``backoffLimit: 0``), so the
others go on; collection marks it lost."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from .cluster import Cluster, ClusterError

POLL_S = 5.0
FATAL_REASONS = {"InvalidImageName", "CreateContainerConfigError", "CrashLoopBackOff"}  # will never start
PENDING_TIMEOUT_S = 600.0


@dataclass
class JobState:
    succeeded: int = 0
    failed: int = 0
    active: int = 0
    complete: bool = False
    finished: bool = False  # the Job's Complete or Failed condition
    stuck: list[str] = field(default_factory=list)


def job_state(cluster: Cluster, release: str, *, pending_limit_s: float, now: float, on_pods=None) -> JobState:
    jobs = cluster.source_jobs(release)
    state = JobState(complete=True, finished=True)
    for job in jobs:  # the sources' Jobs together: all of them complete, or all finished
        status = job.status
        state.succeeded += status.succeeded or 0
        state.failed += status.failed or 0
        state.active += status.active or 0
        conditions = [c.type for c in (status.conditions or []) if c.status == "True"]
        state.complete = state.complete and "Complete" in conditions
        state.finished = state.finished and bool({"Complete", "Failed"} & set(conditions))
    pods = cluster.pods(release)
    if on_pods is not None:
        on_pods(pods)
    for pod in pods:
        reason = _waiting_reason(pod)
        created = pod.metadata.creation_timestamp.timestamp() if pod.metadata.creation_timestamp else now
        pending_too_long = pod.status.phase == "Pending" and now - created > pending_limit_s
        if reason in FATAL_REASONS or pending_too_long:
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


def follow(cluster: Cluster, release: str, sources: int, *, timeout_s: float,
           pending_limit_s: float = PENDING_TIMEOUT_S, say=print, clock=time.time, sleep=time.sleep,
           on_pods=None) -> JobState:
    """Wait until every source pod has ended (succeeded or failed: a failed one does not
    stop the others); raise ClusterError when a pod cannot start or on timeout. Returns
    the Job's last state (``failed``: how many source pods failed). ``on_pods`` is given
    every listing of the release's pods (the log streamer follows them)."""
    deadline = clock() + timeout_s
    last = None
    while True:
        state = job_state(cluster, release, pending_limit_s=pending_limit_s, now=clock(), on_pods=on_pods)
        if state.stuck:
            raise ClusterError("; ".join(state.stuck))
        progress = (state.active, state.succeeded, state.failed)
        if progress != last:
            failed = f", {state.failed} failed (kept going; their logs are kept)" if state.failed else ""
            say(f"  [{release}] sources: {state.active} running, {state.succeeded} of {sources} done{failed}")
            last = progress
        if state.complete or state.succeeded >= sources or \
                (state.succeeded + state.failed >= sources and not state.active) or \
                (state.finished and not state.active):
            return state
        if clock() >= deadline:
            raise ClusterError(f"timed out after {timeout_s:.0f} s waiting for release {release}: "
                               f"{state.succeeded} of {sources} sources done"
                               + (f", {state.failed} failed" if state.failed else ""))
        sleep(POLL_S)
