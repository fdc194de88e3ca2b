"""The Kubernetes backend: install the chart, follow the sources' Job, collect every
pod's trace lines from its log into the run-directory layout of the local backend.

The release goes through the real Helm library (helm-python-sdk); Jobs, pods, logs
and events through the official kubernetes client. Every wait has a timeout, and a
pod that cannot start (an image that cannot be pulled, nowhere to schedule it) is
reported with its events instead of waited on.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BackendError
from .local import ArmResult
from .spec import RunSpec

CHART = Path(__file__).resolve().parents[1] / "charts"
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
REQUEST_TIMEOUT_S = 15
POLL_S = 5.0
STUCK_REASONS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
                 "CreateContainerError", "CrashLoopBackOff"}


class ClusterError(BackendError):
    """Something on the cluster stops the run; the message names it."""


def chart_values(spec: RunSpec, module: str, run_id: str, *, source_image: str = "", server_image: str = "",
                 gpus: int = 1) -> dict:
    """The chart's values for one arm of ``spec``."""
    values = {
        "sources": spec.sources,
        "cpu": spec.cpu,
        "server": {"gpus": gpus, "port": spec.port},
        "workload": {"module": module, "budget": spec.budget, "schedule": spec.schedule,
                     "batchSize": spec.batch_size, "batches": spec.batches, "epochs": spec.epochs,
                     "split": spec.split_for(module), "model": spec.model, "dataset": spec.dataset,
                     "evalSamples": spec.eval_samples, "lr": spec.lr, "seed": spec.seed},
        "runId": run_id,
    }
    if "lr_boost" in spec.extra:
        values["workload"]["lrBoost"] = spec.extra["lr_boost"]
    for key, name in (("boost_epochs", "boostEpochs"), ("quality", "quality"), ("channels", "channels"),
                      ("mask_number", "maskNumber"), ("mask_schedule", "maskSchedule"), ("alpha", "alpha"), ("latent_dim", "latentDim"),
                      ("keep_neurons", "keepNeurons"), ("beta", "beta"), ("latent_channels", "latentChannels")):
        if key in spec.extra:
            values["workload"][name] = spec.extra[key]
    images = {}
    for role, image in (("source", source_image), ("server", server_image)):
        if image:
            repository, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "latest")
            images[role] = {"repository": repository, "tag": tag}
    if images:
        values["images"] = images
    return values


def instance_selector(release: str, component: str | None = None) -> str:
    selector = f"app.kubernetes.io/instance={release}"
    return selector + (f",app.kubernetes.io/component={component}" if component else "")


class Cluster:
    """One namespace of one cluster (kube context)."""

    def __init__(self, *, namespace: str = "default", context: str | None = None, api_client=None, helm=None):
        self.namespace, self.context = namespace, context
        try:
            from kubernetes import client, config
        except ImportError:
            raise ClusterError("the Kubernetes backend needs the 'kubernetes' package: pip install -e '.[k8s]'") from None
        if api_client is None:
            try:
                api_client = config.new_client_from_config(context=context)
            except Exception as exc:  # the client raises several types for a missing or bad kubeconfig
                raise ClusterError(f"no usable Kubernetes configuration{f' for context {context}' if context else ''}: "
                                   f"{exc}") from None
        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self._version = client.VersionApi(api_client)
        self._helm = helm

    # -- the release (Helm) ---------------------------------------------------------
    def helm(self):
        if self._helm is None:
            try:
                import helm_python
            except ImportError:
                raise ClusterError("the Kubernetes backend needs 'helm-python-sdk': pip install -e '.[k8s]'") from None
            self._helm = helm_python.Config(kube_context=self.context, namespace=self.namespace)
        return self._helm

    def install(self, release: str, values: dict, timeout_s: int) -> None:
        try:
            self.helm().install(str(CHART), release, values, namespace=self.namespace, timeout=timeout_s)
        except Exception as exc:  # helm_python raises its own error family; keep its message
            raise ClusterError(f"helm install {release} failed: {exc}") from None

    def uninstall(self, release: str) -> None:
        try:
            self.helm().uninstall(release, ignore_not_found=True)
        except Exception as exc:
            raise ClusterError(f"helm uninstall {release} failed: {exc}") from None

    # -- objects (kubernetes client) --------------------------------------------------
    def _call(self, what: str, fn, *args, **kwargs):
        from kubernetes.client.exceptions import ApiException

        try:
            return fn(*args, _request_timeout=REQUEST_TIMEOUT_S, **kwargs)
        except ApiException as exc:
            raise ClusterError(f"{what}: the cluster answered {exc.status} {exc.reason}") from None
        except Exception as exc:  # urllib3 connection errors and the like
            raise ClusterError(f"{what}: cannot reach the cluster ({type(exc).__name__}: {exc})") from None

    def check_reachable(self) -> str:
        info = self._call("reading the cluster version", self._version.get_code)
        return info.git_version

    def source_job(self, release: str):
        jobs = self._call("listing the Job", self.batch.list_namespaced_job, self.namespace,
                          label_selector=instance_selector(release, "source")).items
        if not jobs:
            raise ClusterError(f"release {release} has no source Job in namespace {self.namespace}")
        return jobs[0]

    def pods(self, release: str, component: str | None = None) -> list:
        return self._call("listing pods", self.core.list_namespaced_pod, self.namespace,
                          label_selector=instance_selector(release, component)).items

    def pod_log(self, name: str) -> str:
        return self._call(f"reading the log of pod {name}", self.core.read_namespaced_pod_log, name, self.namespace)

    def pod_events(self, name: str) -> list[str]:
        events = self._call(f"reading the events of pod {name}", self.core.list_namespaced_event, self.namespace,
                            field_selector=f"involvedObject.name={name}").items
        return [f"{e.reason}: {e.message}" for e in events]


# -- following a run -------------------------------------------------------------------
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


# -- collecting traces -----------------------------------------------------------------
def split_pod_log(text: str) -> tuple[list[str], list[str]]:
    """Trace events (JSON objects with an "event") and the other lines of a pod log."""
    events, other = [], []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("{"):
            try:
                parsed = json.loads(stripped)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict) and "event" in parsed:
                events.append(stripped)
                continue
        if stripped:
            other.append(line)
    return events, other


def collect(cluster: Cluster, release: str, directory: Path) -> dict:
    """Write every pod's trace into ``directory`` (server.jsonl, source-N.jsonl, logs/)
    and return what was found: {"module", "sources", "pods"}."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "logs").mkdir(exist_ok=True)
    pods = cluster.pods(release)
    if not pods:
        raise ClusterError(f"release {release} has no pods in namespace {cluster.namespace} "
                           f"(finished pods are kept for the chart's ttlSecondsAfterFinished)")
    module, sources, cap = None, 0, None
    for pod in pods:
        labels = pod.metadata.labels or {}
        component = labels.get("app.kubernetes.io/component")
        if component == "server":
            name = "server"
        elif component == "source":
            index = (pod.metadata.annotations or {}).get(INDEX_ANNOTATION)
            if index is None:
                raise ClusterError(f"source pod {pod.metadata.name} has no {INDEX_ANNOTATION} annotation")
            name = f"source-{int(index)}"
            sources += 1
            cap = cap or _cpu_limit(pod)
        else:
            continue  # the helm test probe
        events, other = split_pod_log(cluster.pod_log(pod.metadata.name))
        (directory / f"{name}.jsonl").write_text("".join(e + "\n" for e in events))
        (directory / "logs" / f"{name}.log").write_text("".join(o + "\n" for o in other))
        for line in events:
            event = json.loads(line)
            if event.get("event") == "start" and event.get("module"):
                module = event["module"]
    return {"module": module, "sources": sources, "pods": len(pods), "cpu_cap": cap}


def _cpu_limit(pod) -> float | None:
    """A pod's CPU limit in cores ("400m" -> 0.4)."""
    limits = (pod.spec.containers[0].resources.limits or {}) if pod.spec and pod.spec.containers else {}
    value = limits.get("cpu")
    if value is None:
        return None
    return int(value[:-1]) / 1000 if value.endswith("m") else float(value)


def release_name(run_id: str, module: str) -> str:
    """A DNS-1123 release name, unique per run and arm."""
    return f"splittest-{run_id.rsplit('-', 1)[-1]}-{module}".lower()[:53]


class KubernetesBackend:
    """Each arm as a release of the chart: install, follow, collect, uninstall."""
    name = "k8s"

    def __init__(self, spec: RunSpec, cluster: Cluster, *, keep: bool = False, source_image: str = "",
                 server_image: str = "", gpus: int = 1, wait_s: float = 3600.0, say=print):
        self.spec, self.cluster, self.keep, self.say = spec, cluster, keep, say
        self.images = {"source_image": source_image, "server_image": server_image}
        self.gpus, self.wait_s = gpus, wait_s

    def run_arm(self, module: str, directory: Path, run_id: str) -> ArmResult:
        release = release_name(run_id, module)
        values = chart_values(self.spec, module, f"{run_id}/{module}", gpus=self.gpus, **self.images)
        self.say(f"arm {module}: helm install {release} in namespace {self.cluster.namespace}")
        self.cluster.install(release, values, timeout_s=300)
        try:
            follow(self.cluster, release, self.spec.sources, timeout_s=self.wait_s, say=self.say)
            found = collect(self.cluster, release, directory)
        finally:
            if not self.keep:
                self.cluster.uninstall(release)
        if found["sources"] != self.spec.sources:
            raise ClusterError(f"collected {found['sources']} source pods of {self.spec.sources}")
        return ArmResult(module, directory, "kubernetes", f"resources.limits.cpu {self.spec.cpu} per source pod")
