"""One namespace of one cluster: the release through the real Helm library
(helm-python-sdk), Jobs, pods, logs and events through the official kubernetes
client. Every call has a timeout, and every failure becomes one ClusterError that
says what was being done and what the cluster answered."""
from __future__ import annotations

from pathlib import Path

from ..errors import BackendError

CHART = Path(__file__).resolve().parents[2] / "charts"
REQUEST_TIMEOUT_S = 15


class ClusterError(BackendError):
    """Something on the cluster stops the run; the message names it."""


def instance_selector(release: str, component: str | None = None) -> str:
    """The label selector of a release's objects (the chart's standard labels)."""
    selector = f"app.kubernetes.io/instance={release}"
    return selector + (f",app.kubernetes.io/component={component}" if component else "")


class Cluster:
    """One namespace of one cluster (kube context)."""

    def __init__(self, *, namespace: str = "", context: str | None = None, api_client=None, helm=None):
        """``namespace``: empty for the kube context's (what a plain ``helm install`` uses)."""
        self.context = context
        try:
            from kubernetes import client, config
        except ImportError:
            raise ClusterError("the Kubernetes backend needs the 'kubernetes' package: pip install -e '.[k8s]'") from None
        self.namespace = namespace or context_namespace(context)
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
        return self.call(what, fn, *args, **kwargs)

    def call(self, what: str, fn, *args, timeout=REQUEST_TIMEOUT_S, **kwargs):
        """``fn(*args, **kwargs)`` of the kubernetes client with a timeout (seconds, or
        (connect, read)); any failure is one ClusterError saying ``what`` was being done."""
        from kubernetes.client.exceptions import ApiException

        try:
            return fn(*args, _request_timeout=timeout, **kwargs)
        except ApiException as exc:
            raise ClusterError(f"{what}: the cluster answered {exc.status} {exc.reason}") from None
        except Exception as exc:  # urllib3 connection errors and the like
            raise ClusterError(f"{what}: cannot reach the cluster ({type(exc).__name__}: {exc})") from None

    def check_reachable(self) -> str:
        info = self._call("reading the cluster version", self._version.get_code)
        return info.git_version

    def source_jobs(self, release: str) -> list:
        """The release's source Jobs: one Indexed Job, or one Job per source when the
        sources are on different links (the chart's ``link.perSource``)."""
        jobs = self._call("listing the source Jobs", self.batch.list_namespaced_job, self.namespace,
                          label_selector=instance_selector(release, "source")).items
        if not jobs:
            raise ClusterError(f"release {release} has no source Job in namespace {self.namespace}")
        return jobs

    def pods(self, release: str, component: str | None = None) -> list:
        return self._call("listing pods", self.core.list_namespaced_pod, self.namespace,
                          label_selector=instance_selector(release, component)).items

    def pod_log(self, name: str) -> str:
        return self._call(f"reading the log of pod {name}", self.core.read_namespaced_pod_log, name, self.namespace)

    def pod_events(self, name: str) -> list[str]:
        events = self._call(f"reading the events of pod {name}", self.core.list_namespaced_event, self.namespace,
                            field_selector=f"involvedObject.name={name}").items
        return [f"{e.reason}: {e.message}" for e in events]

    def node(self, name: str):
        return self._call(f"reading node {name}", self.core.read_node, name)


def context_namespace(context: str | None = None) -> str:
    """The namespace of kube context ``context`` (default: the current one), as kubectl
    and helm take it: the context's ``namespace``, else the in-cluster service account's,
    else "default"."""
    try:
        from kubernetes import config

        contexts, current = config.list_kube_config_contexts()
        chosen = next((c for c in contexts if c.get("name") == context), None) if context else current
        namespace = ((chosen or {}).get("context") or {}).get("namespace")
        if namespace:
            return namespace
    except Exception:  # no kubeconfig: in a pod, or none at all (the client's own error comes later)
        pass
    try:
        return Path(IN_CLUSTER_NAMESPACE).read_text().strip() or "default"
    except OSError:
        return "default"


IN_CLUSTER_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
