"""Run `testbed run`'s arms as the Helm chart runs them, in containers on this machine.

    python images/container_run.py [--engine podman] [--source-image IMG] [--server-image IMG] \\
        [--engine-arg=--runtime=runc ...] [--keep] -- [testbed run options]

Each arm is rendered by the chart (charts/, with the values `testbed run --backend k8s`
would install: testbed/k8s/values.py), and every pod of the rendered server and source
Jobs is started as a container with the pod's exact command, environment (the
ConfigMap's envFrom, then env; a source's completion index as Kubernetes gives it),
security settings (runAsUser, fsGroup as a supplementary group, read-only root
filesystem, the emptyDir /tmp as a tmpfs, capabilities dropped, no privilege
escalation, the default seccomp profile), the release's CURVE keys as the Secret volume
gives them (root:fsGroup 0440, mounted read-only) and its CPU and memory limits. The
containers share the host's network (--network host): the Service name in
SPLITTEST_SERVER resolves to 127.0.0.1 (--add-host) and the server listens on a free
port (unless --port is given). The containers' logs are the pods' logs: testbed.k8s's
collect() splits them into the run directory's traces, and the testbed's runner writes
the manifest, summary.json and the report, as for any run (`testbed report DIR`).

Only what the chart renders by default for a run is supported (no data or traces
volume). Needs root (or rootless podman) and the images built (images/build-and-run.sh).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from testbed.backend import ArmResult, Backend  # noqa: E402
from testbed.errors import BackendError  # noqa: E402
from testbed.k8s.collect import INDEX_ANNOTATION, collect  # noqa: E402
from testbed.k8s.values import chart_values, release_name  # noqa: E402

CHART = REPO / "charts"
COMPONENT = "app.kubernetes.io/component"
WAIT_S = 3600.0


def render(values: dict, release: str, namespace: str) -> list[dict]:
    """The chart's objects for ``values``, rendered by Helm's own library (as `helm install`)."""
    import helm_python

    rendered = helm_python.Chart.load(str(CHART)).render(values, name=release, namespace=namespace, is_install=True)
    return [d for name, text in rendered.items() if name.endswith(".yaml") for d in yaml.safe_load_all(text) if d]


def quantity_bytes(text: str) -> int:
    """A Kubernetes memory quantity (512Mi, 2Gi, 1G, 1000) in bytes."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9,
             "T": 10**12}
    for unit, factor in sorted(units.items(), key=lambda u: -len(u[0])):
        if text.endswith(unit):
            return int(float(text[:-len(unit)]) * factor)
    return int(float(text))


def cpu_cores(text: str) -> float:
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Pod:
    """One pod of a rendered Job: its spec, its index, and the container that runs it."""

    def __init__(self, job: dict, index: int | None, configmap: dict, release: str):
        self.job, self.index, self.release = job, index, release
        template = job["spec"]["template"]
        self.annotations = dict(template["metadata"].get("annotations") or {})
        if job["spec"].get("completionMode") == "Indexed":
            self.annotations[INDEX_ANNOTATION] = str(index)
        self.labels = dict(template["metadata"].get("labels") or {})
        self.spec = template["spec"]
        self.container = self.spec["containers"][0]
        self.component = self.labels[COMPONENT]
        suffix = f"-{index}" if job["spec"].get("completionMode") == "Indexed" else ""
        self.name = f"{job['metadata']['name']}{suffix}"
        self.env = self._env(configmap)
        self.exit = None  # the container's state once it ended

    def _env(self, configmap: dict) -> dict[str, str]:
        """The container's environment as the kubelet gives it: envFrom, then env."""
        env: dict[str, str] = {}
        for source in self.container.get("envFrom") or []:
            if "configMapRef" not in source or source["configMapRef"]["name"] != configmap["metadata"]["name"]:
                raise BackendError(f"{self.name}: envFrom {source} is not the release's ConfigMap")
            env.update(configmap["data"])
        for item in self.container.get("env") or []:
            if "value" in item:
                env[item["name"]] = str(item["value"])
                continue
            path = item["valueFrom"]["fieldRef"]["fieldPath"]
            prefix = "metadata.annotations['"
            if not path.startswith(prefix):
                raise BackendError(f"{self.name}: env {item['name']} from {path}: not supported here")
            env[item["name"]] = self.annotations[path[len(prefix):-2]]
        return env

    def engine_args(self, keys_dir: Path | None) -> list[str]:
        """The container engine's options that give the container what the pod spec says."""
        pod_context, context = self.spec.get("securityContext") or {}, self.container.get("securityContext") or {}
        merged = {**pod_context, **context}  # the container's own fields win, as in Kubernetes
        args = ["--name", self.name, "--label", f"splittest.release={self.release}",
                "--label", f"{COMPONENT}={self.component}"]
        if merged.get("runAsUser") is not None:
            user = str(merged["runAsUser"]) + (f":{merged['runAsGroup']}" if merged.get("runAsGroup") is not None else "")
            args += ["--user", user]
        for group in ([pod_context["fsGroup"]] if pod_context.get("fsGroup") is not None else []) + \
                list(pod_context.get("supplementalGroups") or []):
            args += ["--group-add", str(group)]
        if merged.get("readOnlyRootFilesystem"):
            # only the pod's volumes are writable (podman would add tmpfs on /run, /tmp, /var/tmp)
            args += ["--read-only", "--read-only-tmpfs=false"]
        caps = merged.get("capabilities") or {}
        args += [f"--cap-drop={c}" for c in caps.get("drop") or []]
        args += [f"--cap-add={c}" for c in caps.get("add") or []]
        if merged.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        if merged.get("privileged"):
            raise BackendError(f"{self.name}: a privileged container")
        seccomp = (merged.get("seccompProfile") or {}).get("type")
        if seccomp not in (None, "RuntimeDefault"):  # RuntimeDefault: the engine's default profile
            raise BackendError(f"{self.name}: seccompProfile {seccomp} is not supported here")
        volumes = {v["name"]: v for v in self.spec.get("volumes") or []}
        for mount in self.container.get("volumeMounts") or []:
            volume = volumes[mount["name"]]
            if "emptyDir" in volume:
                size = (volume["emptyDir"] or {}).get("sizeLimit")
                options = "rw,exec,nosuid,nodev,mode=1777" + (f",size={quantity_bytes(size)}" if size else "")
                args += ["--tmpfs", f"{mount['mountPath']}:{options}"]
            elif "secret" in volume:
                if keys_dir is None:
                    raise BackendError(f"{self.name}: a secret volume but the release has no Secret")
                args += ["-v", f"{keys_dir}:{mount['mountPath']}:{'ro' if mount.get('readOnly') else 'rw'}"]
            else:
                raise BackendError(f"{self.name}: volume {mount['name']} ({', '.join(volume)}) is not supported here")
        limits = (self.container.get("resources") or {}).get("limits") or {}
        if "cpu" in limits:
            args += ["--cpus", f"{cpu_cores(str(limits['cpu'])):g}"]
        if "memory" in limits:
            args += ["--memory", str(quantity_bytes(str(limits["memory"])))]
        if "nvidia.com/gpu" in limits:
            raise BackendError(f"{self.name}: asks for a GPU: run with --gpus 0 (or add the engine's GPU option)")
        for name, value in sorted(self.env.items()):
            args += ["--env", f"{name}={value}"]
        if self.container.get("workingDir"):
            args += ["--workdir", self.container["workingDir"]]
        command = self.container.get("command")
        if command:
            args += ["--entrypoint", json.dumps(command)]
        return args

    def as_k8s(self, engine: "Engine"):
        """The pod as the Kubernetes client would return it, for testbed.k8s.collect."""
        state = self.exit or {}
        code = state.get("ExitCode")
        finished = state.get("FinishedAt")
        terminated = None
        if code is not None:
            when = None
            if finished:
                try:
                    when = dt.datetime.fromisoformat(finished[:26].rstrip("Z").split(" +")[0].split("+")[0])
                    when = when.replace(tzinfo=dt.timezone.utc)
                except ValueError:
                    when = None
            terminated = SimpleNamespace(exit_code=code, reason="OOMKilled" if state.get("OOMKilled") else (
                "Completed" if code == 0 else "Error"), signal=None, message=state.get("Error") or None,
                finished_at=when)
        phase = None if code is None else ("Succeeded" if code == 0 else "Failed")
        limits = (self.container.get("resources") or {}).get("limits") or {}
        return SimpleNamespace(
            metadata=SimpleNamespace(name=self.name, labels=self.labels, annotations=self.annotations),
            status=SimpleNamespace(phase=phase, reason=None, message=None, container_statuses=[
                SimpleNamespace(state=SimpleNamespace(terminated=terminated))]),
            spec=SimpleNamespace(node_name=socket.gethostname(), containers=[
                SimpleNamespace(resources=SimpleNamespace(limits={k: str(v) for k, v in limits.items()}))]))


class Engine:
    """podman (or docker) on this machine."""

    def __init__(self, command: str, run_args: list[str]):
        self.command, self.run_args = command, run_args

    def __call__(self, *args: str, check: bool = True, capture: bool = True) -> str:
        result = subprocess.run([self.command, *args], capture_output=capture, text=True)
        if check and result.returncode != 0:
            raise BackendError(f"{self.command} {' '.join(args[:3])} ...: {result.stderr.strip()[-2000:]}")
        return result.stdout

    def start(self, pod: Pod, image: str, keys_dir: Path | None, server_host: str) -> None:
        self("run", "-d", *self.run_args, "--network", "host", "--add-host", f"{server_host}:127.0.0.1",
             *pod.engine_args(keys_dir), image, *pod.container.get("args", []))

    def state(self, name: str) -> dict:
        return json.loads(self("inspect", "--format", "{{json .State}}", name))

    def logs(self, name: str) -> str:
        result = subprocess.run([self.command, "logs", name], capture_output=True, text=True)
        return result.stdout + result.stderr  # the pod's log: both streams

    def remove(self, name: str) -> None:
        self("rm", "-f", name, check=False)


class ContainerCluster:
    """What testbed.k8s.collect asks a cluster, answered from the containers."""

    def __init__(self, engine: Engine, pods: list[Pod], namespace: str):
        self.engine, self.namespace, self._pods = engine, namespace, pods

    def pods(self, release: str, component: str | None = None) -> list:
        return [p.as_k8s(self.engine) for p in self._pods if p.release == release
                and (component is None or p.component == component)]

    def pod_log(self, name: str) -> str:
        return self.engine.logs(name)


class ContainerBackend(Backend):
    """Each arm as the chart's pods, run as containers on this machine."""
    name = "containers"

    def __init__(self, spec, engine: Engine, *, source_image: str, server_image: str, keep: bool = False,
                 port: int | None = None, say=print):
        self.spec, self.engine, self.keep, self.say = spec, engine, keep, say
        self.images = {"source_image": source_image, "server_image": server_image}
        self.port = port
        self.containers: dict[str, list[dict]] = {}  # by arm: each container's name, command and exit

    def run_arm(self, module: str, directory: Path, run_id: str) -> ArmResult:
        release = release_name(run_id, module)
        values = chart_values(self.spec, module, f"{run_id}/{module}", **self.images)
        values.setdefault("server", {})["port"] = self.port or free_port()
        docs = render(values, release, "default")
        configmap = next(d for d in docs if d["kind"] == "ConfigMap")
        jobs = [d for d in docs if d["kind"] == "Job"
                and d["spec"]["template"]["metadata"]["labels"].get(COMPONENT) in ("server", "source")]
        secret = next((d for d in docs if d["kind"] == "Secret"), None)
        pods: list[Pod] = []
        for job in jobs:
            count = int(job["spec"].get("completions", 1)) if job["spec"].get("completionMode") == "Indexed" else 1
            pods += [Pod(job, i, configmap, release) for i in range(count)]
        server = next(p for p in pods if p.component == "server")
        sources = [p for p in pods if p.component == "source"]
        images = {"server": self.images["server_image"], "source": self.images["source_image"]}
        # the Service's name in SPLITTEST_SERVER (tcp://NAME:PORT), resolved to this host's loopback
        server_host = sources[0].env["SPLITTEST_SERVER"].split("://", 1)[1].rsplit(":", 1)[0]
        self.say(f"arm {module}: release {release} as {len(pods)} containers "
                 f"({server.name}, {len(sources)} sources), port {values['server']['port']}")
        workdir = Path(tempfile.mkdtemp(prefix=f"{release}-"))  # 0700: only root reaches the keys below
        try:
            keys_dir = self._secret(secret, workdir, server) if secret else None
            for pod in [server, *sources]:
                self.engine.remove(pod.name)
                self.engine.start(pod, images[pod.component], keys_dir, server_host)
            self._wait(pods)
            cluster = ContainerCluster(self.engine, pods, "default")
            found = collect(cluster, release, directory)
            self._record(module, pods, directory)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
            if not self.keep:
                for pod in pods:
                    self.engine.remove(pod.name)
        if server.exit.get("ExitCode") != 0:
            raise BackendError(f"arm {module}: the server container exited with status {server.exit.get('ExitCode')}; "
                               f"its log is in {directory / 'logs' / 'server.log'}")
        if found["sources"] != self.spec.sources:
            raise BackendError(f"collected {found['sources']} source containers of {self.spec.sources}")
        cpu = (sources[0].container.get("resources") or {}).get("limits", {}).get("cpu")
        return ArmResult(module, directory, f"{self.engine.command} --cpus",
                         f"{self.engine.command} run --cpus {cpu_cores(str(cpu)):g} per source container "
                         f"(the chart's resources.limits.cpu {cpu})")

    def _secret(self, secret: dict, workdir: Path, server: Pod) -> Path:
        """The Secret as the kubelet mounts it with defaultMode 0400 and the pod's fsGroup:
        each key a file, owned by root and the fsGroup, mode 0440."""
        import base64

        volume = next(v for v in server.spec["volumes"] if "secret" in v)
        mode = int(volume["secret"].get("defaultMode", 0o644))
        group = (server.spec.get("securityContext") or {}).get("fsGroup")
        folder = workdir / "keys"
        folder.mkdir(mode=0o750 if group is not None else 0o755)
        for key, value in secret["data"].items():
            path = folder / key
            path.write_bytes(base64.b64decode(value))
            if group is not None:  # the kubelet: group-owned by the fsGroup, the group gets the owner's read bit
                os.chown(path, 0, int(group))
                mode |= (mode & 0o400) >> 3
            os.chmod(path, mode)
        if group is not None:
            os.chown(folder, 0, int(group))
        return folder

    def _wait(self, pods: list[Pod]) -> None:
        deadline = time.monotonic() + float(getattr(self.spec, "wait", 0) or WAIT_S)
        running = list(pods)
        last = 0.0
        while running:
            for pod in list(running):
                state = self.engine.state(pod.name)
                if state.get("Status") in ("exited", "stopped"):
                    pod.exit = state
                    running.remove(pod)
                    self.say(f"  {pod.name}: exit status {state.get('ExitCode')}"
                             + (" (OOMKilled)" if state.get("OOMKilled") else ""))
            if not running:
                break
            if time.monotonic() > deadline:
                for pod in running:
                    self.engine("stop", "-t", "10", pod.name, check=False)
                    pod.exit = self.engine.state(pod.name)
                raise BackendError(f"containers still running after the wait: {', '.join(p.name for p in running)}")
            if time.monotonic() - last > 30:
                last = time.monotonic()
                self.say(f"  waiting for {', '.join(p.name for p in running)}")
            time.sleep(2)

    def _record(self, module: str, pods: list[Pod], directory: Path) -> None:
        """containers.json in the arm's folder: each container's name, image command and exit."""
        rows = [{"name": p.name, "component": p.component, "index": p.index, "command": p.container.get("command"),
                 "exit_code": (p.exit or {}).get("ExitCode"), "oom_killed": (p.exit or {}).get("OOMKilled"),
                 "started": (p.exit or {}).get("StartedAt"), "finished": (p.exit or {}).get("FinishedAt")}
                for p in pods]
        self.containers[module] = rows
        (directory / "containers.json").write_text(json.dumps(rows, indent=2) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     usage="%(prog)s [options] -- [testbed run options]")
    parser.add_argument("--engine", default="podman", help="container engine (default podman)")
    parser.add_argument("--engine-arg", action="append", default=[],
                        help="an option for every `ENGINE run` (repeat; e.g. --engine-arg=--runtime=runc)")
    parser.add_argument("--source-image", default="localhost/splittest-source:0.1.0")
    parser.add_argument("--server-image", default="localhost/splittest-server:0.1.0")
    parser.add_argument("--keep", action="store_true", help="leave the containers (podman rm them by hand)")
    args, rest = parser.parse_known_args(argv)
    rest = [a for a in rest if a != "--"]

    from testbed.cli import build_parser, spec_from_args
    from testbed.k8s import KubernetesBackend
    from testbed.errors import exit_status
    from testbed.runner import run
    from testbed.spec import validate

    run_args = build_parser().parse_args(["run", "--backend", KubernetesBackend.name, *rest])  # the chart's checks
    spec = spec_from_args(run_args)

    def body() -> int:
        validate(spec)  # what the chart can take (the k8s backend's checks)
        given_port = any(a == "--port" or a.startswith("--port=") for a in rest)
        backend = ContainerBackend(spec, Engine(args.engine, args.engine_arg), source_image=args.source_image,
                                   server_image=args.server_image, keep=args.keep,
                                   port=spec.port if given_port else None)
        return run(spec, backend=backend)

    return exit_status(body)


if __name__ == "__main__":
    sys.exit(main())
