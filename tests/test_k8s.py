"""The Kubernetes backend without a cluster (none exists on the build machines):
what the chart's pods run is run here for real, and the backend's calls are played
against API responses in the shape the Kubernetes API returns them."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import helm_python
import pytest
from kubernetes import client

from testbed.backend import ArmResult, Backend
from testbed.k8s import Cluster, ClusterError, KubernetesBackend, collect, follow, split_pod_log
from testbed.spec import RunSpec, SpecError, validate
from analysis.summary import summarise_arm

from conftest import free_port
from test_chart import KEYS_DIR, env_of, one, render, secret_keys

TINY_VALUES = {"sources": 2, "cpu": 0.5, "server": {"gpus": 0},
               "workload": {"module": "filter", "model": "vgg11-slim", "dataset": "synthetic", "batchSize": 8,
                            "batches": 2, "epochs": 1, "evalSamples": 8}}


def local_command(container, env, service, port, keys=None, traces=None):
    """The container's command for this machine: this Python, the Service at 127.0.0.1,
    the Secret's mount at ``keys`` (a local folder holding what the pod would see), the
    traces volume's mount at ``traces`` (when the release has one)."""
    address = f"127.0.0.1:{port}"
    command = [sys.executable if container["command"][0] == "python" else container["command"][0],
               *(a.replace(f"{service}:5555", address) for a in container["command"][1:]), *container.get("args", [])]
    env = {k: v for k, v in env.items() if isinstance(v, str)}
    env["SPLITTEST_PORT"] = str(port)
    env["SPLITTEST_SERVER"] = env.get("SPLITTEST_SERVER", "").replace(f"{service}:5555", address)
    if "SPLITTEST_KEYS" in env:
        assert env["SPLITTEST_KEYS"] == KEYS_DIR and keys is not None, "the pod reads keys the test did not write"
        env["SPLITTEST_KEYS"] = str(keys)
    if traces is not None:
        assert env["SPLITTEST_TRACE_DIR"] == "/traces"
        env["SPLITTEST_TRACE_DIR"] = str(traces)  # where the volume is mounted here
    return command, env


def mount_secret(docs, folder):
    """What the pods see at the Secret's mount: one file per key of the rendered Secret
    (``data`` base64-decoded, ``stringData`` as it is), read-only, like defaultMode 0400."""
    folder.mkdir(mode=0o700)
    for name, value in secret_keys(one(docs, "Secret")).items():
        (folder / name).write_text(value)
        (folder / name).chmod(0o400)
    return folder


def start_rendered_server(docs, port, keys, traces=None):
    """The rendered server container's command as a local process; returns it once it listens.
    ``traces``: where the traces volume is mounted here (a release with traces.volume)."""
    configmap, service = one(docs, "ConfigMap"), one(docs, "Service")["metadata"]["name"]
    container = one(docs, "Job", "server")["spec"]["template"]["spec"]["containers"][0]
    command, env = local_command(container, env_of(container, configmap), service, port, keys, traces)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("SPLITTEST_")}
    return subprocess.Popen(command, env={**base_env, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


# The release the pods of `pod_run` come from: the tiny workload, with a traces volume (a hand install's)
POD_VALUES = {**TINY_VALUES, "traces": {"volume": {"persistentVolumeClaim": {"claimName": "traces"}}}}


@pytest.fixture(scope="module")
def pod_run(tmp_path_factory):
    """Run the rendered server and source containers' commands as local processes and
    keep what they print, exactly as `kubectl logs` would show it. The chart's default is
    CURVE: the rendered Secret is written where SPLITTEST_KEYS points, so they talk
    encrypted, with the release's keys, as the pods do. The release has traces.volume: its
    mount is a local folder. Returns (the logs, that folder)."""
    docs, _ = render(POD_VALUES)
    root = tmp_path_factory.mktemp("pods")
    keys = mount_secret(docs, root / "keys")
    mounted = root / "traces"
    mounted.mkdir()
    configmap, service = one(docs, "ConfigMap"), one(docs, "Service")["metadata"]["name"]
    port = free_port()
    server = start_rendered_server(docs, port, keys, traces=mounted)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("SPLITTEST_")}
    source_container = one(docs, "Job", "source")["spec"]["template"]["spec"]["containers"][0]
    sources = []
    for index in range(2):
        command, env = local_command(source_container, env_of(source_container, configmap), service, port, keys,
                                     mounted)
        env["SPLITTEST_SOURCE_ID"] = str(index)  # what the completion-index fieldRef gives pod `index`
        sources.append(subprocess.Popen(command, env={**base_env, **env}, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True))
    logs = {}
    try:
        for index, proc in enumerate(sources):
            logs[f"source-{index}"] = proc.communicate(timeout=300)[0]
            assert proc.returncode == 0, logs[f"source-{index}"][-2000:]
        # the server is a Job: it ends by itself once its N sources said bye
        logs["server"] = server.communicate(timeout=60)[0]
        assert server.returncode == 0, logs["server"][-2000:]
    finally:
        if server.poll() is None:
            server.terminate()
            server.communicate(timeout=30)
    logs["secret keys"] = sorted(p.read_text() for p in keys.iterdir())  # to check no log shows them
    return logs, mounted


@pytest.fixture(scope="module")
def pod_logs(pod_run):
    """What the pods of `pod_run` printed, by pod ("server", "source-0", "source-1"), and
    the release's secret keys ("secret keys")."""
    return pod_run[0]


def test_the_rendered_containers_run_and_trace_to_stdout(pod_logs):
    events, other = split_pod_log(pod_logs["source-1"])
    kinds = [json.loads(e)["event"] for e in events]
    assert kinds[0] == "start" and kinds.count("batch") == 2 and "eval" in kinds and kinds[-1] == "end"
    assert json.loads(events[-1])["status"] == "ok" and json.loads(events[0])["source"] == 1
    assert json.loads(events[0])["run"] == "splittest"  # runId defaults to the release name
    server_events = [json.loads(e) for e in split_pod_log(pod_logs["server"])[0]]
    assert sum(e["event"] == "hello" for e in server_events) == 2


def test_the_rendered_pods_talk_over_curve_and_never_log_the_keys(pod_logs):
    server_events = [json.loads(e) for e in split_pod_log(pod_logs["server"])[0]]
    [listening] = [e for e in server_events if e["event"] == "listening"]
    assert listening["curve"] is True
    requests = [e for e in server_events if e["event"] == "request"]
    assert requests and all(e["bytes_in"] > 0 for e in requests)
    for name, log in pod_logs.items():
        if name != "secret keys":
            assert not any(key in log for key in pod_logs["secret keys"]), name


def test_the_rendered_server_answers_no_one_without_the_releases_keys(tmp_path):
    """Another pod that reaches the port (no CURVE, or another release's keys) gets no
    answer at all; the `helm test` probe, with the release's keys, gets one."""
    from concurrent.futures import ThreadPoolExecutor

    import zmq

    from testbed.keys import make_run_keys
    from workloads.protocol import Message, encode
    from workloads.transport import Connection, ServerGone, ServerTimeout

    docs, _ = render(TINY_VALUES)
    keys = mount_secret(docs, tmp_path / "keys")
    other_release = mount_secret(render(TINY_VALUES)[0], tmp_path / "other-release")
    port = free_port()
    server = start_rendered_server(docs, port, keys)
    probes = {}
    try:
        for line in server.stdout:  # ready when it listens (the readinessProbe's moment)
            if '"event":"listening"' in line.replace(" ", ""):
                break
        else:
            raise AssertionError("the rendered server did not start")
        address = f"tcp://127.0.0.1:{port}"
        service = one(docs, "Service")["metadata"]["name"]
        probe = one(docs, "Pod", "probe")["spec"]["containers"][0]
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("SPLITTEST_")}
        command, env = local_command(probe, env_of(probe, one(docs, "ConfigMap")), service, port, keys)
        assert env["SPLITTEST_KEYS"] == str(keys)
        without = {k: v for k, v in env.items() if k != "SPLITTEST_KEYS"}  # the same probe without the Secret's mount
        # all of them at once, each awaiting its own answer: the probes, the plaintext peer, the strangers
        for name, argv, probe_env in (("answered", command, env), ("refused", [*command, "--timeout", "2"], without)):
            probes[name] = subprocess.Popen(argv, env={**base_env, **probe_env}, stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, text=True)
        plain = zmq.Context.instance().socket(zmq.DEALER)
        plain.setsockopt(zmq.LINGER, 0)
        plain.connect(address)
        plain.send_multipart(encode(Message("ping", {})))

        def stranger(folder):
            outsider = Connection(address, 2, keys=str(folder))
            try:
                with pytest.raises((ServerTimeout, ServerGone)):
                    outsider.request(Message("ping", {}))
            finally:
                outsider.close()
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(stranger, (other_release, make_run_keys(tmp_path / "local-run"))))  # raises what they raised
        assert not plain.poll(500)
        plain.close()
        (out, err), refused = probes["answered"].communicate(timeout=60), probes["refused"].communicate(timeout=60)
        assert probes["answered"].returncode == 0 and "answers: " in out, err
        assert probes["refused"].returncode == 1, refused
    finally:
        for proc in probes.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        server.terminate()
        logged = server.communicate(timeout=30)[0]
    events = [json.loads(e) for e in split_pod_log(logged)[0]]
    assert [(e["event"], e.get("op")) for e in events if e["event"] in ("request", "hello", "error")] == \
        [("request", "pong")]  # the probe's ping, and nothing from the others
    assert not any(key in logged for key in secret_keys(one(docs, "Secret")).values())


# -- recorded API responses --------------------------------------------------------------
def pod(name, component, phase="Running", index=None, waiting=None, created="2026-11-21T10:00:00Z", node=None,
        restarts=0):
    item = {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "bench", "creationTimestamp": created,
                         "labels": {"app.kubernetes.io/instance": "rel", "app.kubernetes.io/component": component},
                         "annotations": {} if index is None else {"batch.kubernetes.io/job-completion-index": str(index)}},
            "spec": {"nodeName": node or f"node-{component}",
                     "containers": [{"name": component, "image": f"splittest-{component}:0.1.0",
                                     "resources": {"limits": {"cpu": "400m"}}}]},
            "status": {"phase": phase, "containerStatuses": [{
                "name": component, "image": f"splittest-{component}:0.1.0", "imageID": "", "ready": phase == "Running",
                "restartCount": restarts, "state": {"waiting": {"reason": waiting, "message": "back-off pulling image"}}
                if waiting else {"running": {"startedAt": created}}}]}}
    return item


def job(succeeded=0, active=0, failed=0, complete=False):
    status = {"succeeded": succeeded, "active": active, "failed": failed}
    if complete:
        status["conditions"] = [{"type": "Complete", "status": "True"}]
    return {"kind": "JobList", "apiVersion": "batch/v1", "metadata": {}, "items": [{
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "rel-splittest-sources", "namespace": "bench"},
        "spec": {"template": {"spec": {"containers": [{"name": "source"}]}}}, "status": status}]}


class RecordedApi:
    """Answers the kubernetes client's HTTP requests from recorded responses."""

    def __init__(self, routes):
        self.routes, self.calls = routes, []

    def request(self, method, url, headers=None, body=None, post_params=None, _request_timeout=None):
        parsed = urlparse(url)
        query = {k: v[0] for k, v in parse_qs(parsed.query).items()}
        self.calls.append((method, parsed.path, query))
        answer = self.routes(parsed.path, query)
        if isinstance(answer, BaseException):  # a refused connection, or Ctrl-C while waiting on one
            raise answer
        status, payload = answer
        if isinstance(payload, Served):
            return client.rest.RESTResponse(payload)
        text = isinstance(payload, str)  # pod logs come as text/plain
        if text and query.get("timestamps") == "true":
            payload = stamped(payload)
        data = payload.encode() if text else json.dumps(payload).encode()
        kind = "text/plain; charset=utf-8" if text else "application/json"
        return client.rest.RESTResponse(Served(data, status, kind))


def stamped(text, base="2026-11-21T10:00:00"):
    """A log as `timestamps=true` gives it: line i written at base + i microseconds (the
    same line gets the same stamp on every read)."""
    return "".join(f"{base}.{i:06d}000Z {line}\n" for i, line in enumerate(text.splitlines()))


class Served:
    """A response body as urllib3 gives it to the client: whole (``data``) or, unpreloaded
    (``_preload_content=False``, how logs are followed), as chunks (``stream``)."""

    def __init__(self, data: bytes, status=200, kind="text/plain; charset=utf-8", chunk=64 * 1024):
        self.data, self.status, self.chunk = data, status, chunk
        self.reason, self.headers = "OK" if status == 200 else "Error", {"content-type": kind}

    def stream(self, amt=None, decode_content=True):
        for start in range(0, len(self.data), self.chunk):
            yield self.data[start:start + self.chunk]

    def release_conn(self):
        pass


def cluster_with(routes, helm=None):
    configuration = client.Configuration()
    configuration.host = "https://recorded.invalid"
    api = client.ApiClient(configuration)
    recorded = RecordedApi(routes)
    api.rest_client = recorded
    return Cluster(namespace="bench", api_client=api, helm=helm), recorded


@pytest.mark.quick
def test_a_pod_that_cannot_pull_its_image_is_reported_with_its_events():
    def routes(path, query):
        if path == "/apis/batch/v1/namespaces/bench/jobs":
            assert query["labelSelector"] == "app.kubernetes.io/instance=rel,app.kubernetes.io/component=source"
            return 200, job(active=2)
        if path == "/api/v1/namespaces/bench/pods":
            return 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [
                pod("rel-server", "server"), pod("rel-sources-0", "source", "Pending", 0, waiting="ImagePullBackOff")]}
        if path == "/api/v1/namespaces/bench/events":
            assert query["fieldSelector"] == "involvedObject.name=rel-sources-0"
            return 200, {"kind": "EventList", "apiVersion": "v1", "metadata": {}, "items": [
                {"metadata": {"name": "e1"}, "involvedObject": {}, "reason": "Failed",
                 "message": 'Failed to pull image "splittest-source:0.1.0": not found'}]}
        raise AssertionError(path)
    cluster, _ = cluster_with(routes)
    with pytest.raises(ClusterError, match=r"pod rel-sources-0 is ImagePullBackOff .*Failed to pull image"):
        follow(cluster, "rel", 2, timeout_s=60, say=lambda *_: None, sleep=lambda _: None)


@pytest.mark.quick
def test_following_ends_when_the_job_completes_and_times_out_otherwise():
    states = iter([job(active=2), job(active=1, succeeded=1), job(succeeded=2, complete=True)])

    def routes(path, query):
        if path.endswith("/jobs"):
            return 200, next(states)
        return 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [pod("rel-server", "server")]}
    cluster, _ = cluster_with(routes)
    said = []
    follow(cluster, "rel", 2, timeout_s=60, say=said.append, sleep=lambda _: None)
    assert said[-1].endswith("sources: 0 running, 2 of 2 done")

    cluster, _ = cluster_with(lambda path, q: (200, job(active=2)) if path.endswith("/jobs") else
                              (200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": []}))
    clock = iter(range(0, 10_000, 50))
    with pytest.raises(ClusterError, match="timed out after 120 s waiting for release rel: 0 of 2 sources done"):
        follow(cluster, "rel", 2, timeout_s=120, say=lambda *_: None, clock=lambda: next(clock), sleep=lambda _: None)


@pytest.mark.quick
def test_an_unreachable_cluster_is_one_clear_error():
    import urllib3

    cluster, _ = cluster_with(lambda p, q: urllib3.exceptions.MaxRetryError(None, p, "Connection refused"))
    with pytest.raises(ClusterError, match="cannot reach the cluster"):
        cluster.check_reachable()


def recorded_release(pod_logs):
    def routes(path, query):
        if path == "/api/v1/namespaces/bench/pods":
            return 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [
                pod("rel-server", "server"), pod("rel-sources-0", "source", "Succeeded", 0),
                pod("rel-sources-1", "source", "Succeeded", 1), pod("rel-test-server", "probe", "Succeeded")]}
        if path.startswith("/api/v1/namespaces/bench/pods/") and path.endswith("/log"):
            name = path.split("/")[-2]
            return 200, pod_logs["server" if name == "rel-server" else name.replace("rel-sources", "source")]
        if path.endswith("/jobs"):
            return 200, job(succeeded=2, complete=True)
        raise AssertionError(path)
    return routes


def test_collection_writes_the_local_run_layout_from_pod_logs(pod_logs, tmp_path):
    cluster, _ = cluster_with(recorded_release(pod_logs))
    found = collect(cluster, "rel", tmp_path / "filter")
    assert found == {"module": "filter", "sources": 2, "pods": 4, "cpu_cap": 0.4, "lost": []}
    assert sorted(p.name for p in (tmp_path / "filter").glob("*.jsonl")) == ["server.jsonl", "source-0.jsonl", "source-1.jsonl"]
    summary = summarise_arm(tmp_path / "filter", "filter", 2, 0.4, "kubernetes")
    assert summary["bytes_sent_total"] > 0 and len(summary["samples_per_s_per_source"]) == 2


class HelmRecorder:
    """Stands in for helm_python.Config: there is no cluster to install into here, so
    installs and uninstalls are recorded, and fail where a test says they do (with the
    error type helm_python raises)."""

    def __init__(self, install_fails="", uninstall_fails=""):
        self.calls, self.chart = [], None
        self.install_fails, self.uninstall_fails = install_fails, uninstall_fails

    def install(self, chart, name, values, **kwargs):
        self.chart = chart
        self.calls.append(("install", name, values))
        if self.install_fails:
            raise helm_python.HelmReleaseError(self.install_fails)

    def uninstall(self, name, **kwargs):
        assert kwargs.get("ignore_not_found"), "a release whose install failed early may not exist"
        self.calls.append(("uninstall", name))
        if self.uninstall_fails:
            raise helm_python.HelmKubeError(self.uninstall_fails)


def test_a_run_on_the_cluster_installs_follows_collects_and_uninstalls(pod_logs, tmp_path):
    """helm itself is replaced by a recorder here: there is no cluster to install into."""
    helm = HelmRecorder()
    cluster, _ = cluster_with(recorded_release(pod_logs), helm=helm)
    spec = RunSpec(sources=2, cpu=0.4, modules=("filter",), model="vgg11-slim", batches=2, epochs=1,
                   backend="k8s", gpus=0, out=str(tmp_path / "run"))
    from testbed.runner import run
    code = run(spec, lambda *a, **k: None, KubernetesBackend(spec, cluster, say=lambda *a: None))
    assert code == 0
    (kind, release, values), uninstall = helm.calls
    assert kind == "install" and uninstall == ("uninstall", release) and release.endswith("-filter")
    assert (Path(helm.chart) / "Chart.yaml").is_file()  # the chart Helm is given is the repository's
    assert values["sources"] == 2 and values["cpu"] == 0.4 and values["server"]["gpus"] == 0
    assert values["workload"]["module"] == "filter" and values["workload"]["model"] == "vgg11-slim"
    assert values["curve"] == {"enabled": True}  # the chart makes the release's keys
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["arms"]["filter"]["cap_method"] == "kubernetes"
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["backend"] == "k8s" and manifest["status"] == "ok"
    assert (tmp_path / "run" / "report" / "traffic.png").exists()


# -- the release never outlives its arm (unless --keep) -------------------------------------
def tiny_spec(tmp_path, **kwargs):
    return RunSpec(sources=2, cpu=0.4, modules=("filter",), model="vgg11-slim", batches=2, epochs=1,
                   backend="k8s", gpus=0, out=str(tmp_path / "run"), **kwargs)


def no_pods(path, query):
    if path.endswith("/jobs"):
        return 200, job(succeeded=2, complete=True)
    return 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": []}


@pytest.mark.quick
def test_a_failed_install_is_uninstalled_and_named(tmp_path, capsys):
    """An install that timed out waiting leaves a half-made release: it is removed too."""
    helm = HelmRecorder(install_fails="context deadline exceeded")
    cluster, api = cluster_with(lambda p, q: AssertionError(f"nothing follows a failed install: {p}"), helm=helm)
    spec = tiny_spec(tmp_path)
    backend = KubernetesBackend(spec, cluster, say=lambda *a: None)
    with pytest.raises(ClusterError, match=r"^helm install splittest-abc123-filter failed: context deadline exceeded$"):
        backend.run_arm("filter", tmp_path / "filter", "20261121-100000-abc123")
    release = "splittest-abc123-filter"
    assert [c[:2] for c in helm.calls] == [("install", release), ("uninstall", release)]
    assert api.calls == []

    from testbed.errors import Exit, exit_status
    from testbed.runner import run
    helm.calls.clear()
    assert exit_status(lambda: run(spec, lambda *a, **k: None, backend)) == Exit.FAILED
    assert "helm install" in capsys.readouterr().err and [c[0] for c in helm.calls] == ["install", "uninstall"]
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["status"] == "failed"


@pytest.mark.quick
def test_when_the_uninstall_fails_too_both_failures_are_in_one_line(tmp_path):
    helm = HelmRecorder(install_fails="context deadline exceeded", uninstall_fails="connection refused")
    cluster, _ = cluster_with(no_pods, helm=helm)
    backend = KubernetesBackend(tiny_spec(tmp_path), cluster, say=lambda *a: None)
    with pytest.raises(ClusterError) as caught:
        backend.run_arm("filter", tmp_path / "filter", "20261121-100000-abc123")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("helm install splittest-abc123-filter failed: context deadline exceeded; then "
                              "helm uninstall splittest-abc123-filter failed: connection refused")
    assert message.endswith("remove it with: helm uninstall splittest-abc123-filter --namespace bench")

    helm = HelmRecorder(uninstall_fails="connection refused")  # a failed collection, then a failed uninstall
    cluster, _ = cluster_with(no_pods, helm=helm)
    backend = KubernetesBackend(tiny_spec(tmp_path), cluster, say=lambda *a: None)
    with pytest.raises(ClusterError, match=r"^release splittest-abc123-filter has no pods .*; then helm uninstall"):
        backend.run_arm("filter", tmp_path / "filter", "20261121-100000-abc123")


def test_an_arm_that_went_well_but_cannot_be_uninstalled_says_so(pod_logs, tmp_path):
    helm = HelmRecorder(uninstall_fails="connection refused")
    cluster, _ = cluster_with(recorded_release(pod_logs), helm=helm)
    backend = KubernetesBackend(tiny_spec(tmp_path), cluster, say=lambda *a: None)
    with pytest.raises(ClusterError, match=r"^helm uninstall splittest-abc123-filter failed: connection refused; "
                                           r"the release is left installed"):
        backend.run_arm("filter", tmp_path / "filter", "20261121-100000-abc123")
    assert (tmp_path / "filter" / "source-1.jsonl").stat().st_size > 0  # what was collected stays


@pytest.mark.quick
def test_a_failed_collection_is_uninstalled_and_keep_keeps_it(tmp_path):
    helm = HelmRecorder()
    cluster, _ = cluster_with(no_pods, helm=helm)
    backend = KubernetesBackend(tiny_spec(tmp_path), cluster, say=lambda *a: None)
    with pytest.raises(ClusterError, match="has no pods in namespace bench"):
        backend.run_arm("filter", tmp_path / "filter", "20261121-100000-abc123")
    assert [c[0] for c in helm.calls] == ["install", "uninstall"]

    helm = HelmRecorder(install_fails="context deadline exceeded")
    cluster, _ = cluster_with(no_pods, helm=helm)
    said = []
    backend = KubernetesBackend(tiny_spec(tmp_path), cluster, keep=True, say=said.append)
    with pytest.raises(ClusterError, match="helm install"):
        backend.run_arm("filter", tmp_path / "filter", "20261121-100000-abc123")
    assert [c[0] for c in helm.calls] == ["install"]
    assert said[-1].endswith("kept (--keep); remove it with: helm uninstall splittest-abc123-filter --namespace bench")


@pytest.mark.quick
def test_ctrl_c_while_following_uninstalls_and_stays_an_interrupt(tmp_path):
    def interrupted(path, query):
        return KeyboardInterrupt()  # Ctrl-C (or SIGTERM, which the CLI raises as it) mid-request
    helm = HelmRecorder()
    cluster, _ = cluster_with(interrupted, helm=helm)
    backend = KubernetesBackend(tiny_spec(tmp_path), cluster, say=lambda *a: None)
    with pytest.raises(KeyboardInterrupt):
        backend.run_arm("filter", tmp_path / "filter", "20261121-100000-abc123")
    assert [c[0] for c in helm.calls] == ["install", "uninstall"]

    helm, warned = HelmRecorder(uninstall_fails="connection refused"), []
    cluster, _ = cluster_with(interrupted, helm=helm)
    backend = KubernetesBackend(tiny_spec(tmp_path), cluster, say=lambda *a: None, warn=warned.append)
    with pytest.raises(KeyboardInterrupt):
        backend.run_arm("filter", tmp_path / "filter", "20261121-100000-abc123")
    assert warned == ["interrupted; then helm uninstall splittest-abc123-filter failed: connection "
                      "refused; the release is left installed, remove it with: helm uninstall splittest-abc123-filter "
                      "--namespace bench"]


@pytest.mark.quick
def test_both_backends_offer_the_one_backend_interface(tmp_path):
    from dataclasses import fields

    from testbed import local
    cluster, _ = cluster_with(no_pods, helm=HelmRecorder())
    spec = tiny_spec(tmp_path)
    assert isinstance(KubernetesBackend(spec, cluster), Backend) and KubernetesBackend.name == "k8s"
    assert isinstance(local.LocalBackend(spec), Backend) and local.LocalBackend.name == "local"
    assert [(f.name, f.type) for f in fields(ArmResult)] == [(f.name, f.type) for f in fields(local.ArmResult)]


@pytest.mark.quick
def test_insecure_installs_the_chart_without_curve(tmp_path):
    from testbed.k8s.values import chart_values

    assert chart_values(tiny_spec(tmp_path), "filter", "r")["curve"] == {"enabled": True}
    values = chart_values(tiny_spec(tmp_path, insecure=True), "filter", "r")
    assert values["curve"] == {"enabled": False}
    docs, _ = render(values)
    assert "Secret" not in {d["kind"] for d in docs}
    helm = HelmRecorder()
    cluster, _ = cluster_with(no_pods, helm=helm)
    backend = KubernetesBackend(tiny_spec(tmp_path, insecure=True), cluster, say=lambda *a: None)
    with pytest.raises(ClusterError):  # no pods to collect: only the install's values matter here
        backend.run_arm("filter", tmp_path / "filter", "20261121-100000-abc123")
    assert helm.calls[0][0] == "install" and helm.calls[0][2]["curve"] == {"enabled": False}


# -- checking a spec for the cluster ---------------------------------------------------------
@pytest.mark.quick
def test_cpu_per_source_pod_is_not_bounded_by_this_hosts_cores(monkeypatch):
    """--cpu on Kubernetes is each source pod's limit on a cluster node, not a share of this
    machine: asking 4 cores from a 2-core laptop that drives the cluster is fine."""
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    with pytest.raises(SpecError, match="more than this host's 2 cores"):
        validate(RunSpec(cpu=4.0, backend="local", modules=("filter",)))
    validate(RunSpec(cpu=4.0, backend="k8s", modules=("filter",)))


# -- a failed source pod is a lost source --------------------------------------------------

def failed_pod(name, index, reason, exit_code):
    item = pod(name, "source", "Failed", index)
    item["status"]["containerStatuses"][0]["state"] = {"terminated": {
        "exitCode": exit_code, "reason": reason, "startedAt": "2026-11-21T10:00:00Z",
        "finishedAt": "2026-11-21T10:01:00Z"}}
    return item


def test_a_failed_source_pod_does_not_end_the_arm_and_is_collected_as_lost(pod_logs, tmp_path):
    states = iter([job(active=2), job(active=1, failed=1), job(succeeded=1, failed=1)])
    killed = "".join(line + "\n" for line in pod_logs["source-1"].splitlines()
                     if '"event":"end"' not in line and '"event":"eval"' not in line)  # died after training

    def routes(path, query):
        if path.endswith("/jobs"):
            return 200, next(states)
        if path == "/api/v1/namespaces/bench/pods":
            return 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [
                pod("rel-server", "server"), pod("rel-sources-0", "source", "Succeeded", 0),
                failed_pod("rel-sources-1", 1, "OOMKilled", 137)]}
        if path.endswith("/log"):
            name = path.split("/")[-2]
            return 200, {"rel-server": pod_logs["server"], "rel-sources-0": pod_logs["source-0"],
                         "rel-sources-1": killed}[name]
        raise AssertionError(path)
    cluster, _ = cluster_with(routes)
    said = []
    state = follow(cluster, "rel", 2, timeout_s=60, say=said.append, sleep=lambda _: None)
    assert (state.succeeded, state.failed) == (1, 1) and said[-1].startswith("  [rel] sources: 0 running, 1 of 2 done, 1 failed")
    found = collect(cluster, "rel", tmp_path / "filter")
    [lost] = found["lost"]
    assert (lost["source"], lost["cause"], lost["signal"], lost["reason"], lost["injected"]) == \
        (1, "out of memory (OOMKilled, exit code 137)", "SIGKILL", "OOMKilled", False)
    assert [json.loads(line) for line in (tmp_path / "filter" / "testbed.jsonl").read_text().splitlines()] == [lost]
    summary = summarise_arm(tmp_path / "filter", "filter", 2, 0.4, "kubernetes")
    assert summary["status_per_source"] == ["ok", "lost"] and summary["partial"] is True
    assert summary["lost_sources"][0]["cause"] == lost["cause"] and summary["lost_sources"][0]["batches_done"] == 2


def test_a_source_pod_that_lost_the_server_fails_the_arm(pod_logs, tmp_path):
    gone = pod_logs["source-1"].replace('"status":"ok"', '"status":"server-gone","error":"the server is gone: x"')

    def routes(path, query):
        if path == "/api/v1/namespaces/bench/pods":
            return 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [
                pod("rel-server", "server"), failed_pod("rel-sources-1", 1, "Error", 3)]}
        return 200, gone if "sources" in path else pod_logs["server"]
    cluster, _ = cluster_with(routes)
    with pytest.raises(ClusterError, match="the server is gone: source pod rel-sources-1 .*the server is gone: x"):
        collect(cluster, "rel", tmp_path / "filter")


# -- no trace is lost: logs are streamed while the arm runs ------------------------------------
ROTATION_BYTES = 10 * 1024 * 1024  # the kubelet's default containerLogMaxSize


class RotatingLog:
    """One container's log as the API serves it on a node whose kubelet rotates: a follow
    that was open while the lines were written gets every line (here in chunks, and the
    first one drops mid-way, as connections do); any read opened after the rotation gets
    only the newest file. Every line carries its timestamp when asked (timestamps=true)."""

    def __init__(self, lines, drop_after: int):
        self.lines = [f"2026-11-21T10:{i // 60_000_000:02d}:{i // 1_000_000 % 60:02d}.{i % 1_000_000:06d}000Z {line}\n"
                      for i, line in enumerate(lines)]
        size, self.newest = 0, len(self.lines)
        while self.newest > 0 and size + len(self.lines[self.newest - 1]) <= ROTATION_BYTES // 2:
            self.newest -= 1
            size += len(self.lines[self.newest])
        self.drop_after = drop_after  # lines the first follow carries before its connection drops
        assert self.newest < drop_after, "the rotation must have dropped lines the first follow carried"
        self.requests = []

    def serve(self, query):
        self.requests.append(query)
        assert query.get("timestamps") == "true", "without timestamps a reopened stream cannot be joined up"
        if len(self.requests) == 1:
            assert query.get("follow") == "true"
            return 200, Dropping("".join(self.lines[:self.drop_after]).encode())
        return 200, Served("".join(self.lines[self.newest:]).encode())  # after the rotation: the newest file


class Dropping(Served):
    """A followed log whose connection drops after what it carried."""

    def stream(self, amt=None, decode_content=True):
        yield from super().stream(amt, decode_content)
        import urllib3
        raise urllib3.exceptions.ProtocolError("Connection broken: IncompleteRead")


def test_a_log_longer_than_the_kubelets_rotation_arrives_whole_because_it_was_streamed(pod_logs, tmp_path,
                                                                                      monkeypatch):
    """11 MiB of a source's log (its trace and the lines around it): a read after the run
    would get the newest 5 MiB; the streamed copy has every line, once, in order, across a
    dropped connection; a restarted server's earlier container is read with previous=true."""
    monkeypatch.setattr(sys.modules["testbed.k8s.follow"], "POLL_S", 0.05)
    real = pod_logs["source-0"].splitlines()
    noise = [f"warning {i}: " + "x" * 200 for i in range(52_000)]  # ~11 MiB of stderr lines
    source_lines = real[:3] + noise + real[3:]
    assert sum(len(line) + 1 for line in source_lines) > ROTATION_BYTES
    source_log = RotatingLog(source_lines, drop_after=len(source_lines) * 2 // 3)
    server_lines = pod_logs["server"].splitlines()
    half = len(server_lines) // 2
    before, after = "".join(f"{line}\n" for line in server_lines[:half]), server_lines[half:]
    previous_reads = []

    jobs = iter([job(active=1), job(succeeded=1, complete=True)])
    listings = []

    def routes(path, query):
        if path.endswith("/jobs"):
            return 200, next(jobs, job(succeeded=1, complete=True))
        if path == "/api/v1/namespaces/bench/pods":
            listings.append(path)
            if len(listings) > 1:  # the source has run (while its log was followed) and is done
                for _ in range(500):
                    if source_log.requests:
                        break
                    time.sleep(0.01)
            phase = "Running" if len(listings) == 1 else "Succeeded"
            return 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [
                pod("rel-server", "server", restarts=1), pod("rel-sources-0", "source", phase, 0)]}
        if path == "/api/v1/namespaces/bench/pods/rel-sources-0/log":
            return source_log.serve(query)
        if path == "/api/v1/namespaces/bench/pods/rel-server/log":
            if query.get("previous") == "true":  # the first container, before its restart
                previous_reads.append(query)
                return 200, Served(stamped(before, base="2026-11-21T09:00:00").encode())
            return 200, "".join(f"{line}\n" for line in after)
        return 404, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "code": 404}
    cluster, _ = cluster_with(routes)
    spec = RunSpec(sources=1, cpu=0.4, modules=("filter",), model="vgg11-slim", batches=2, epochs=1, backend="k8s",
                   gpus=0)
    backend = KubernetesBackend(spec, cluster, say=lambda *a: None, warn=pytest.fail)
    cluster._helm = HelmRecorder()
    backend.run_arm("filter", tmp_path / "filter", "20261121-100000-abc123")
    events, other = split_pod_log("\n".join(source_lines))
    assert (tmp_path / "filter" / "source-0.jsonl").read_text() == "".join(e + "\n" for e in events)
    assert (tmp_path / "filter" / "logs" / "source-0.log").read_text() == "".join(o + "\n" for o in other)
    assert len(source_log.requests) >= 2 and "sinceSeconds" in source_log.requests[1]  # reopened after the drop
    server = [json.loads(line) for line in (tmp_path / "filter" / "server.jsonl").read_text().splitlines()]
    assert [json.dumps(e, separators=(",", ":")) for e in server] == \
        [json.dumps(json.loads(e), separators=(",", ":")) for e in split_pod_log(pod_logs["server"])[0]]
    assert len(previous_reads) == 1
    assert not (tmp_path / "filter" / "_stream").exists()  # all of it is in the traces and logs/


def test_a_source_pod_that_fails_mid_run_leaves_every_pods_trace_before_the_uninstall(pod_logs, tmp_path):
    """Source 1 is OOM-killed, the arm then fails (here: its wait runs out), and the Job
    controller has deleted the pods by then: their logs can no longer be read. What was
    streamed is in the run directory before helm uninstall is called."""
    killed = "".join(line + "\n" for line in pod_logs["source-1"].splitlines()
                     if '"event":"end"' not in line and '"event":"eval"' not in line)
    logs = {"rel-server": pod_logs["server"], "rel-sources-0": pod_logs["source-0"], "rel-sources-1": killed}
    served, listed = set(), []

    def routes(path, query):
        if path.endswith("/jobs"):
            return 200, job(active=1, succeeded=1, failed=1)
        if path == "/api/v1/namespaces/bench/pods":
            listed.append(1)
            return 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [] if len(listed) > 1 else [
                pod("rel-server", "server"), pod("rel-sources-0", "source", "Running", 0),
                failed_pod("rel-sources-1", 1, "OOMKilled", 137)]}
        name = path.split("/")[-2]
        if path.endswith("/log") and name not in served:  # one read, then the pod is deleted
            served.add(name)
            return 200, logs[name]
        return 404, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "code": 404,
                     "reason": "NotFound"}

    at_uninstall = {}

    class Checking(HelmRecorder):
        def uninstall(self, name, **kwargs):
            arm = tmp_path / "filter"
            at_uninstall.update({p.name: p.read_text() for p in arm.glob("*.jsonl")})
            super().uninstall(name, **kwargs)
    helm = Checking()
    cluster, _ = cluster_with(routes, helm=helm)
    said = []
    backend = KubernetesBackend(tiny_spec(tmp_path), cluster, wait_s=0.001, say=said.append, warn=said.append)
    with pytest.raises(ClusterError, match="timed out"):
        backend.run_arm("filter", tmp_path / "filter", "20261121-100000-abc123")
    assert [c[0] for c in helm.calls] == ["install", "uninstall"]
    assert sorted(at_uninstall) == ["server.jsonl", "source-0.jsonl", "source-1.jsonl", "testbed.jsonl"]
    assert at_uninstall["source-0.jsonl"] == "".join(e + "\n" for e in split_pod_log(pod_logs["source-0"])[0])
    assert at_uninstall["source-1.jsonl"] == "".join(e + "\n" for e in split_pod_log(killed)[0])
    assert at_uninstall["server.jsonl"] and json.loads(at_uninstall["testbed.jsonl"])["cause"] == \
        "out of memory (OOMKilled, exit code 137)"
    assert any("the traces so far are in" in line for line in said)


@pytest.mark.quick
def test_the_log_stream_joins_up_reopened_reads_by_their_timestamps(tmp_path):
    from testbed.k8s.stream import stamp_ns

    assert stamp_ns(b"2026-11-21T10:00:00.5Z x")[0] == stamp_ns(b"2026-11-21T10:00:00.500000000Z x")[0]
    assert stamp_ns(b"2026-11-21T12:00:01+02:00 y") == (stamp_ns(b"2026-11-21T10:00:01Z y")[0], b"y")
    assert stamp_ns(b"no stamp") == (None, b"no stamp")


# -- start-up: pulls take time, sources wait for the server -------------------------------------
@pytest.mark.quick
def test_a_transient_pull_error_is_not_fatal_and_the_pending_limit_is_an_option():
    created = "2026-11-21T10:00:00Z"
    start = 1795255200.0  # created, in seconds
    waiting = iter(["ErrImagePull", "ImagePullBackOff", None])
    jobs = iter([job(active=1), job(active=1), job(succeeded=1, complete=True)])

    def routes(path, query):
        if path.endswith("/jobs"):
            return 200, next(jobs)
        if path.endswith("/events"):
            return 200, {"kind": "EventList", "apiVersion": "v1", "metadata": {}, "items": []}
        reason = next(waiting, None)
        return 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [
            pod("rel-sources-0", "source", "Pending" if reason else "Running", 0, waiting=reason, created=created)]}
    cluster, _ = cluster_with(routes)
    clock = iter([start, start + 100, start + 200, start + 300, start + 400, start + 500])
    follow(cluster, "rel", 1, timeout_s=3600, pending_limit_s=600, say=lambda *_: None, clock=lambda: next(clock),
           sleep=lambda _: None)  # ErrImagePull, then a back-off within the limit: the pull went through

    cluster, _ = cluster_with(one_pending_pod("ImagePullBackOff", created))
    with pytest.raises(ClusterError, match="ImagePullBackOff for 700 s"):
        follow(cluster, "rel", 1, timeout_s=3600, pending_limit_s=600, say=lambda *_: None,
               clock=lambda: start + 700, sleep=lambda _: None)
    cluster, _ = cluster_with(one_pending_pod("InvalidImageName", created))
    with pytest.raises(ClusterError, match="InvalidImageName for 1 s"):  # never fixes itself: at once
        follow(cluster, "rel", 1, timeout_s=3600, pending_limit_s=600, say=lambda *_: None,
               clock=lambda: start + 1, sleep=lambda _: None)
    from testbed.cli import build_parser
    args = build_parser().parse_args(["run", "--backend", "k8s", "--pending-timeout", "900"])
    assert args.pending_timeout == 900.0


# The server program, held: its imports (torch, and what its optimizer imports) done, it runs
# main() only once a line arrives on stdin; until then nothing listens on its port.
HELD_SERVER = ("import sys, torch._dynamo; from workloads import server; sys.stdin.readline(); "
               "sys.exit(server.main(sys.argv[1:]))")


def test_a_source_started_before_its_server_waits_for_it(tmp_path):
    """The source's first hello waits up to --connect-timeout (the chart's
    source.connectTimeout) for a server that is not there yet; --timeout applies after."""
    from workloads.settings import option

    assert option("connect-timeout").chart == "source.connectTimeout" and option("connect-timeout").default >= 600
    port = free_port()
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("SPLITTEST_")}
    common = ["--sources", "1", "--model", "vgg11-slim", "--dataset", "synthetic", "--batch-size", "4"]
    source = subprocess.Popen([sys.executable, "-m", "workloads.source", "--server", f"tcp://127.0.0.1:{port}",
                               "--timeout", "2", "--connect-timeout", "120", "--batches", "1", "--epochs", "1",
                               "--eval-samples", "4", *common], env=base_env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    # the server's process starts now (its image pulled, say) but listens only when released
    server = subprocess.Popen([sys.executable, "-c", HELD_SERVER, "--port", str(port), "--bind", "127.0.0.1",
                               "--device", "cpu", "--expect-sources", "1", *common], env=base_env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        before = []  # the source's lines up to its `data` event: the hello comes next
        for line in source.stdout:
            before.append(line)
            if '"event":"data"' in line:
                break
        else:
            raise AssertionError("the source ended before its hello: " + "".join(before)[-2000:])
        asking = json.loads(before[-1])["t"]  # the moment its hello began
        while time.time() < asking + 2.5:  # past --timeout 2 the server is still "pulling its image" ...
            assert source.poll() is None, "the source did not wait for --connect-timeout"  # ... and it waits
            time.sleep(0.05)
        assert server.poll() is None, server.communicate()[0][-2000:]
        server.stdin.write("go\n")  # the server starts listening
        server.stdin.flush()
        out = "".join(before) + source.communicate(timeout=180)[0]
        assert source.returncode == 0, out[-2000:]
        events = [json.loads(e) for e in split_pod_log(out)[0]]
        assert any(e["event"] == "connected" for e in events)
    finally:
        for proc in (source, server):
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


# -- data, namespace, manifest ------------------------------------------------------------------
@pytest.mark.quick
def test_data_reaches_a_cluster_run_through_a_pvc(tmp_path):
    from testbed.k8s.values import chart_values
    from testbed.spec import data_in_use

    with pytest.raises(SpecError, match=r"^--data-dir is for the local backend only: .*--data-pvc NAME"):
        validate(RunSpec(backend="k8s", modules=("filter",), data_dir=str(tmp_path)))
    with pytest.raises(SpecError, match="--data-pvc is for the k8s backend"):
        validate(RunSpec(backend="local", modules=("filter",), data_pvc="cifar10"))
    spec = RunSpec(backend="k8s", modules=("filter",), data_pvc="cifar10")
    validate(spec)
    assert chart_values(spec, "filter", "r")["data"]["pvc"] == "cifar10"
    assert not data_in_use(spec).startswith("synthetic") and "cifar10" in data_in_use(spec)
    assert data_in_use(RunSpec(backend="k8s", modules=("filter",))).startswith("synthetic")
    assert "pvc" not in chart_values(RunSpec(backend="k8s", modules=("filter",)), "filter", "r").get("data", {})


@pytest.mark.quick
def test_the_namespace_defaults_to_the_kube_contexts(tmp_path, monkeypatch):
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "team",
        "clusters": [{"name": "c", "cluster": {"server": "https://recorded.invalid"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "team", "context": {"cluster": "c", "user": "u", "namespace": "bench-team"}},
                     {"name": "plain", "context": {"cluster": "c", "user": "u"}}]}))
    monkeypatch.setattr("kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
    from testbed.options import TESTBED_OPTIONS
    assert next(o for o in TESTBED_OPTIONS if o.name == "namespace").default == ""
    assert Cluster().namespace == "bench-team"
    assert Cluster(context="plain").namespace == "default"
    assert Cluster(namespace="given", context="team").namespace == "given"


def test_the_manifest_of_a_cluster_run_records_the_nodes_not_this_machine(pod_logs, tmp_path):
    nodes = {
        "node-server": {"labels": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "kubernetes.io/arch": "amd64"},
                        "allocatable": {"cpu": "31500m", "nvidia.com/gpu": "1"}},
        "node-source": {"labels": {"feature.node.kubernetes.io/cpu-model.family": "6",
                                   "feature.node.kubernetes.io/cpu-model.vendor_id": "Intel"},
                        "allocatable": {"cpu": "7910m"}}}
    inner = recorded_release(pod_logs)

    def routes(path, query):
        if path.startswith("/api/v1/nodes/"):
            name = path.rsplit("/", 1)[-1]
            return 200, {"apiVersion": "v1", "kind": "Node",
                         "metadata": {"name": name, "labels": nodes[name]["labels"]},
                         "status": {"allocatable": nodes[name]["allocatable"], "nodeInfo": {
                             "architecture": "amd64", "kernelVersion": "6.8.0", "osImage": "Ubuntu 24.04",
                             "containerRuntimeVersion": "containerd://1.7", "kubeletVersion": "v1.31.0",
                             "bootID": "", "machineID": "", "systemUUID": "", "kubeProxyVersion": "",
                             "operatingSystem": "linux"}}}
        return inner(path, query)
    helm = HelmRecorder()
    cluster, _ = cluster_with(routes, helm=helm)
    spec = tiny_spec(tmp_path)
    from testbed.runner import run
    assert run(spec, lambda *a, **k: None, KubernetesBackend(spec, cluster, say=lambda *a: None)) == 0
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["testbed_host"]["cores"] == os.cpu_count() and "cores" not in manifest["host"]
    host = manifest["host"]
    assert host["server_gpu"] == "NVIDIA-H100-80GB-HBM3"
    assert host["nodes"]["node-source"]["allocatable_cpu"] == "7910m"
    assert host["nodes"]["node-source"]["cpu_model"] == {"family": "6", "vendor_id": "Intel"}
    assert host["nodes"]["node-server"]["kernel"] == "6.8.0" and host["nodes"]["node-server"]["pods"] == ["rel-server"]
    assert sorted(host["nodes"]["node-source"]["pods"]) == ["rel-sources-0", "rel-sources-1"]
    assert manifest["arms"]["filter"]["cluster"]["pods"]["rel-sources-1"]["node"] == "node-source"


def test_traces_volume_keeps_every_pods_trace_beside_its_log(pod_run):
    """A hand install with traces.volume: each pod writes its trace into the volume too, in
    an arm folder's layout. The rendered pods (`pod_run`'s) ran here with the mount at a
    local folder."""
    logs, mounted = pod_run
    docs, _ = render(POD_VALUES)
    configmap = one(docs, "ConfigMap")
    for component in ("server", "source"):
        pod = one(docs, "Job", component)["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert {"name": "traces", "mountPath": "/traces"} in container["volumeMounts"]
        assert {"name": "traces", "persistentVolumeClaim": {"claimName": "traces"}} in pod["volumes"]
        assert env_of(container, configmap)["SPLITTEST_TRACE_DIR"] == "/traces"
    for name in ("server", "source-0", "source-1"):
        streamed = split_pod_log(logs[name])[0]
        assert streamed and (mounted / f"{name}.jsonl").read_text().splitlines() == streamed, name


def one_pending_pod(reason: str, created: float):
    """API routes: a Job with one source pod Pending, its container waiting for ``reason``."""
    return lambda p, q: (200, job(active=1)) if p.endswith("/jobs") else \
        (200, {"kind": "EventList", "apiVersion": "v1", "metadata": {}, "items": []}) if p.endswith("/events") else \
        (200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [
            pod("rel-sources-0", "source", "Pending", 0, waiting=reason, created=created)]})


# -- links: what a cluster can enforce, and what it cannot ------------------------------------
def link_spec(**kwargs):
    return RunSpec(**{"backend": "k8s", "modules": ("filter",), "sources": 5, **kwargs})


def annotated_links(values):
    """{source id: (egress, ingress)} of the pods the real chart renders from ``values``."""
    from test_chart import links_by_source

    docs, _ = render(values)
    return links_by_source(docs)


@pytest.mark.quick
def test_bandwidth_becomes_each_source_pods_annotations_cycled_by_source_index():
    from kubernetes.utils import parse_quantity

    from testbed.k8s.values import chart_values
    from testbed.links.values import cycle, parse_updown, per_source

    spec = link_spec(bandwidth="5mbit")
    values = chart_values(spec, "filter", "r")
    assert values["link"] == {"bandwidth": "5mbit", "perSource": []}
    assert annotated_links(values) == {i: ("5M", "5M") for i in range(5)}
    text = "2mbit,5mbit/20mbit,0.94mbit/2.02mbit"
    values = chart_values(link_spec(bandwidth=text), "filter", "r")
    assert values["link"] == {"bandwidth": "", "perSource": ["2mbit", "5mbit/20mbit", "940kbit/2020kbit"]}
    pods = annotated_links(values)
    # the same rule as the local backend's: source i gets item i mod len, UP the egress (what the source sends)
    expected = cycle(per_source(text, parse_updown, "--bandwidth"), 5)
    assert [(parse_quantity(pods[i][0]), parse_quantity(pods[i][1])) for i in range(5)] == \
        [(rate.up, rate.down) for rate in expected]
    assert pods[3] == ("2M", "2M") and pods[4] == ("5M", "20M")
    # a list whose items are all alike, or longer than the fleet: one link, one Indexed Job
    assert chart_values(link_spec(bandwidth="3mbit,3mbit"), "filter", "r")["link"] == {"bandwidth": "3mbit",
                                                                                        "perSource": []}
    assert chart_values(link_spec(sources=2, bandwidth="1mbit,2mbit,3mbit"), "filter", "r")["link"]["perSource"] == \
        ["1mbit", "2mbit"]
    assert chart_values(link_spec(), "filter", "r")["link"] == {"bandwidth": "", "perSource": []}


@pytest.mark.quick
def test_a_link_profile_gives_its_rates_and_bandwidth_beside_it_wins():
    from testbed.k8s import link_warnings
    from testbed.k8s.values import chart_values

    values = chart_values(link_spec(link="lte"), "filter", "r")
    assert values["link"] == {"bandwidth": "5950kbit/5030kbit", "perSource": []}
    assert annotated_links(values)[0] == ("5950k", "5030k")
    [delay, cni] = link_warnings(link_spec(link="lte"))
    assert delay.startswith("--link lte: its 20ms one-way delay is not emulated on Kubernetes")
    assert "kubernetes.io/egress-bandwidth" in cni and "bandwidth plugin" in cni
    assert chart_values(link_spec(link="lte", bandwidth="1mbit"), "filter", "r")["link"]["bandwidth"] == "1mbit"
    # a shared profile runs only when the user accepts a link of its own per pod
    values = chart_values(link_spec(link="wifi", medium="dedicated"), "filter", "r")
    assert annotated_links(values)[4] == ("65M", "65M")
    assert link_warnings(link_spec()) == []


@pytest.mark.quick
@pytest.mark.parametrize("setting, message", [
    ({"delay": "20ms"}, r"^--delay cannot be enforced on Kubernetes: the CNI bandwidth plugin shapes rate only, .*"
                        r"NET_ADMIN.*; use the local backend"),
    ({"delay": "0ms,5ms"}, r"^--delay cannot be enforced on Kubernetes"),
    ({"loss": "1%"}, r"^--loss cannot be enforced on Kubernetes: the CNI bandwidth plugin shapes rate only"),
    ({"medium": "shared", "bandwidth": "20mbit"}, r"^--medium shared cannot be enforced on Kubernetes: .*each source "
                                                  r"pod on its own.*no one channel"),
    ({"link": "wifi"}, r"^--link wifi is a shared medium \(every source contends for one 65mbit channel\), which "
                       r"Kubernetes cannot enforce: .*add --medium dedicated"),
    ({"link": "wifi-g", "bandwidth": "10mbit"}, r"^--link wifi-g is a shared medium .*one 10mbit channel"),
    ({"link_trace": "up.csv"}, r"^--link-trace cannot be enforced on Kubernetes: .*sets a pod's rate once.*"
                               r"cannot follow a trace"),
])
def test_what_a_cluster_cannot_enforce_is_refused_in_one_line(setting, message):
    from testbed.k8s import link_values
    from testbed.k8s.values import chart_values

    spec = link_spec(**setting)
    with pytest.raises(ValueError, match=message) as refused:
        link_values(spec)
    assert "\n" not in str(refused.value)
    with pytest.raises(ValueError, match=message):  # nothing is installed with it either
        chart_values(spec, "filter", "r")


@pytest.mark.quick
def test_what_a_cluster_can_enforce_or_needs_not_is_not_refused():
    from testbed.k8s import link_values

    for setting in ({"delay": "0ms"}, {"loss": "0%"}, {"medium": "dedicated", "bandwidth": "5mbit"},
                    {"sweep_bandwidth": "1mbit,5mbit"}, {"link": "3g"}, {"link": "ethernet", "bandwidth": "2mbit,1mbit"}):
        link_values(link_spec(**setting))


def two_source_jobs(*states):
    """The source Jobs of a release whose sources are on different links: one per source."""
    items = []
    for index, (succeeded, active, failed) in enumerate(states):
        status = {"succeeded": succeeded, "active": active, "failed": failed}
        if succeeded:
            status["conditions"] = [{"type": "Complete", "status": "True"}]
        elif failed:
            status["conditions"] = [{"type": "Failed", "status": "True"}]
        items.append({"apiVersion": "batch/v1", "kind": "Job",
                      "metadata": {"name": f"rel-splittest-source-{index}", "namespace": "bench"},
                      "spec": {"template": {"spec": {"containers": [{"name": "source"}]}}}, "status": status})
    return {"kind": "JobList", "apiVersion": "batch/v1", "metadata": {}, "items": items}


def linked_pod(index, egress, ingress, phase="Succeeded"):
    """A source pod of a Job of its own: no completion index, the chart's source-id annotation."""
    item = pod(f"rel-splittest-source-{index}-x7k2p", "source", phase)
    item["metadata"]["annotations"] = {"splittest/source-id": str(index), "kubernetes.io/egress-bandwidth": egress,
                                       "kubernetes.io/ingress-bandwidth": ingress}
    return item


def test_a_run_with_sources_on_different_links_follows_and_collects_a_job_per_source(pod_logs, tmp_path,
                                                                                   monkeypatch):
    monkeypatch.setattr(sys.modules["testbed.k8s.follow"], "POLL_S", 0.05)  # three polls of a recorded cluster
    states = iter([two_source_jobs((0, 1, 0), (0, 1, 0)), two_source_jobs((1, 0, 0), (0, 1, 0)),
                   two_source_jobs((1, 0, 0), (1, 0, 0))])
    logs = {"rel-server": pod_logs["server"], "rel-splittest-source-0-x7k2p": pod_logs["source-0"],
            "rel-splittest-source-1-x7k2p": pod_logs["source-1"]}

    def routes(path, query):
        if path.endswith("/jobs"):
            return 200, next(states, two_source_jobs((1, 0, 0), (1, 0, 0)))
        if path == "/api/v1/namespaces/bench/pods":
            return 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [
                pod("rel-server", "server"), linked_pod(0, "2M", "2M"), linked_pod(1, "5M", "20M")]}
        if path.endswith("/log"):
            return 200, logs[path.split("/")[-2]]
        if path.startswith("/api/v1/nodes/"):
            return 404, {"kind": "Status", "apiVersion": "v1", "code": 404}
        raise AssertionError(path)
    helm, warned = HelmRecorder(), []
    cluster, _ = cluster_with(routes, helm=helm)
    spec = tiny_spec(tmp_path, bandwidth="2mbit,5mbit/20mbit")
    from testbed.runner import run
    said = []
    backend = KubernetesBackend(spec, cluster, say=said.append, warn=warned.append)
    assert run(spec, lambda *a, **k: None, backend) == 0
    assert any(line.endswith("sources: 0 running, 2 of 2 done") for line in said)
    [(_, _, values), _] = helm.calls
    assert values["link"] == {"bandwidth": "", "perSource": ["2mbit", "5mbit/20mbit"]}
    docs, _ = render(values)
    assert sorted(d["metadata"]["name"] for d in docs if d["kind"] == "Job") == [
        "splittest-server", "splittest-source-0", "splittest-source-1"]  # the real chart: a Job per source
    assert annotated_links(values) == {0: ("2M", "2M"), 1: ("5M", "20M")}
    assert sorted(p.name for p in (tmp_path / "run" / "filter").glob("source-*.jsonl")) == ["source-0.jsonl",
                                                                                           "source-1.jsonl"]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    pods = manifest["arms"]["filter"]["cluster"]["pods"]
    assert pods["rel-splittest-source-1-x7k2p"]["link"] == {"egress": "5M", "ingress": "20M"}
    assert "link" not in pods["rel-server"]
    assert len(warned) == 1 and "bandwidth plugin" in warned[0]  # once per run, not per poll


@pytest.mark.quick
def test_one_failed_source_job_is_a_lost_source_not_the_end():
    states = iter([two_source_jobs((0, 1, 0), (0, 1, 0)), two_source_jobs((0, 0, 1), (0, 1, 0)),
                   two_source_jobs((0, 0, 1), (1, 0, 0))])

    def routes(path, query):
        if path.endswith("/jobs"):
            return 200, next(states)
        return 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": []}
    cluster, _ = cluster_with(routes)
    said = []
    state = follow(cluster, "rel", 2, timeout_s=60, say=said.append, sleep=lambda _: None)
    assert (state.succeeded, state.failed, state.complete, state.finished) == (1, 1, False, True)
    assert said[1] == "  [rel] sources: 1 running, 0 of 2 done, 1 failed (kept going; their logs are kept)"


def test_the_controller_runs_inside_the_rendered_source_pod(tmp_path):
    """--adapt on a cluster: the chart's values reach the source container, whose controller
    decides from what it measures itself (the testbed is not there)."""
    values = {**TINY_VALUES, "sources": 1, "workload": {**TINY_VALUES["workload"], "batches": 12, "adapt": "threshold",
                                                        "target": 1000000.0, "adaptInterval": 0.01, "adaptDwell": 1}}
    docs, _ = render(values)
    keys = mount_secret(docs, tmp_path / "keys")
    configmap, service = one(docs, "ConfigMap"), one(docs, "Service")["metadata"]["name"]
    container = one(docs, "Job", "source")["spec"]["template"]["spec"]["containers"][0]
    env = env_of(container, configmap)
    assert (env["SPLITTEST_ADAPT"], float(env["SPLITTEST_TARGET"]), env["SPLITTEST_ADAPT_DWELL"]) == ("threshold", 1e6, "1")
    assert env["SPLITTEST_OWN_INTERFACE"] == "true"
    port = free_port()
    server = start_rendered_server(docs, port, keys)
    command, env = local_command(container, env, service, port, keys)
    env["SPLITTEST_SOURCE_ID"] = "0"
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("SPLITTEST_")}
    try:
        log = subprocess.run(command, env={**base_env, **env}, capture_output=True, text=True, timeout=300).stdout
        server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
    events = [json.loads(e) for e in split_pod_log(log)[0]]
    decided = [e for e in events if e["event"] == "adapt"]
    assert events[-1]["status"] == "ok" and decided
    assert decided[0]["previous"] == 32 and decided[0]["value"] == 16 and "more compression" in decided[0]["reason"]
