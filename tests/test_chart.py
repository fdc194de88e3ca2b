"""The chart, linted and rendered by the real Helm library, validated against the
Kubernetes OpenAPI schemas; the rendered containers' commands run for real."""
import json
import subprocess

import helm_python
import kubernetes_validate
import pytest
import yaml

from workloads.compression import available

from conftest import REPO

pytestmark = pytest.mark.quick  # every test here is fast: the quick tier (-m quick)

CHART = REPO / "charts"
K8S_VERSION = "1.37.0"


def render(values=None, release="splittest", namespace="bench"):
    rendered = helm_python.Chart.load(str(CHART)).render(values or {}, name=release, namespace=namespace,
                                                         is_install=True)
    docs = [d for name, text in rendered.items() if name.endswith(".yaml") for d in yaml.safe_load_all(text) if d]
    notes = next((t for n, t in rendered.items() if n.endswith("NOTES.txt")), "")
    return docs, notes


def one(docs, kind, component=None):
    found = [d for d in docs if d["kind"] == kind and (component is None or d["metadata"]["labels"].get(
        "app.kubernetes.io/component") == component)]
    assert len(found) == 1, f"{kind}/{component}: {len(found)} objects"
    return found[0]


def env_of(container, configmap):
    """The container's environment as Kubernetes would give it (envFrom, then env)."""
    env = dict(configmap["data"]) if container.get("envFrom") else {}
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", item.get("valueFrom"))
    return env


VALUE_SETS = [
    {},
    {"sources": 8, "cpu": 0.4},
    {"sources": 3, "cpu": "1500m", "server": {"gpus": 0, "port": 6000}, "workload": {"module": "deprune"}},
    {"link": {"bandwidth": "20mbit"}, "source": {"nodeSelector": {"role": "edge"}},
     "server": {"gpus": 2, "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]},
     "data": {"volume": {"persistentVolumeClaim": {"claimName": "cifar10"}}}, "imagePullSecrets": [{"name": "reg"}]},
    {"traces": {"volume": {"persistentVolumeClaim": {"claimName": "traces"}}}, "data": {"pvc": "cifar10"}},
    {"sources": 1000, "cpu": "100m", "memory": "256Mi"},  # a fleet of a thousand source pods
]


@pytest.mark.parametrize("values", VALUE_SETS, ids=range(len(VALUE_SETS)))
def test_lint_is_clean_and_every_object_passes_the_kubernetes_schemas(values):
    result = helm_python.lint(str(CHART), values, strict=True)
    assert result["errors"] == [], result
    docs, _ = render(values)
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "Job", "Job", "NetworkPolicy", "Pod", "Secret", "Service"]
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "splittest" and labels["app.kubernetes.io/instance"] == "splittest"
        assert labels["app.kubernetes.io/managed-by"] == "Helm" and "app.kubernetes.io/version" in labels


def test_eight_sources_at_0_4_cpu_and_a_gpu_server():
    docs, notes = render({"sources": 8, "cpu": 0.4})
    job = one(docs, "Job", "source")
    assert job["spec"]["completions"] == 8 and job["spec"]["parallelism"] == 8
    assert job["spec"]["completionMode"] == "Indexed"
    source = job["spec"]["template"]["spec"]["containers"][0]
    assert source["resources"]["limits"]["cpu"] == "400m"
    assert source["command"] == ["python", "-m", "workloads.source"]
    server = one(docs, "Job", "server")["spec"]["template"]["spec"]["containers"][0]
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert server["command"] == ["python", "-m", "workloads.server"]
    assert server["ports"][0]["containerPort"] == 5555
    service = one(docs, "Service")
    assert service["spec"]["ports"][0]["port"] == 5555
    configmap = one(docs, "ConfigMap")
    env = env_of(source, configmap)
    assert env["SPLITTEST_MODULE"] == "none" and env["SPLITTEST_BUDGET"] == "4"  # the programs' default
    assert env["SPLITTEST_BATCH_SIZE"] == "16" and env["SPLITTEST_BATCHES"] == "32" and env["SPLITTEST_EPOCHS"] == "4"
    assert env["SPLITTEST_SPLIT"] == "2" and env["SPLITTEST_MODEL"] == "vgg11" and env["SPLITTEST_SOURCES"] == "8"
    assert env["SPLITTEST_SERVER"] == f"tcp://{service['metadata']['name']}:5555"
    assert env["SPLITTEST_SOURCE_ID"]["fieldRef"]["fieldPath"].endswith("['batch.kubernetes.io/job-completion-index']")
    assert env_of(server, configmap)["SPLITTEST_DEVICE"] == "cuda"
    assert "testbed collect splittest --namespace bench" in notes


def test_cpu_server_and_bandwidth_and_scheduling_values_reach_the_pods():
    docs, _ = render(VALUE_SETS[2])
    server = one(docs, "Job", "server")["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in server["resources"]["limits"]
    assert env_of(server, one(docs, "ConfigMap"))["SPLITTEST_DEVICE"] == "cpu"
    job = one(docs, "Job", "source")
    assert job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] == "1500m"
    assert "tolerations" not in one(docs, "Job", "server")["spec"]["template"]["spec"]  # no GPU, no GPU toleration
    docs, _ = render(VALUE_SETS[3])
    pod = one(docs, "Job", "source")["spec"]["template"]
    assert pod["metadata"]["annotations"]["kubernetes.io/egress-bandwidth"] == "20M"
    assert pod["metadata"]["annotations"]["kubernetes.io/ingress-bandwidth"] == "20M"
    assert pod["spec"]["nodeSelector"] == {"role": "edge"}
    assert pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "cifar10"
    assert one(docs, "Job", "server")["spec"]["template"]["spec"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},  # the GPU nodes' taint
        {"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_only_the_sources_reach_the_server_port():
    docs, _ = render()
    policy = one(docs, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "server"
    rule = policy["spec"]["ingress"][0]
    assert rule["ports"] == [{"port": 5555, "protocol": "TCP"}]
    allowed = {e["key"]: e["values"] for e in rule["from"][0]["podSelector"]["matchExpressions"]}
    assert allowed == {"app.kubernetes.io/instance": ["splittest"], "app.kubernetes.io/component": ["source", "probe"]}
    probe = one(docs, "Pod")
    assert probe["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert probe["spec"]["containers"][0]["command"][:3] == ["python", "-m", "workloads.probe"]


@pytest.mark.parametrize("values, problem", [
    ({"sources": 0}, "at '/sources': minimum: got 0, want 1"),
    ({"cpu": -1}, "at '/cpu'"),
    ({"cpu": 0}, "exclusiveMinimum: got 0, want 0"),
    ({"workload": {"module": "zip"}}, "value must be one of 'cdc', 'crbq', 'deprune', 'entropic', 'filter', 'jpeg'"),
])
def test_bad_values_are_rejected_by_the_schema(values, problem):
    with pytest.raises(helm_python.HelmValuesError, match=problem.replace("(", r"\(").replace("'", "'")):
        render(values)


def test_schema_lists_exactly_the_registered_modules():
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["properties"]["workload"]["properties"]["module"]["enum"] == available()


def test_input_modules_run_at_split_0():
    from workloads.compression import get
    for module in available():
        docs, _ = render({"workload": {"module": module, "quality": 30}})
        data = one(docs, "ConfigMap")["data"]
        assert data["SPLITTEST_SPLIT"] == ("0" if get(module).input_only else "2"), module
        assert data["SPLITTEST_QUALITY"] == "30"


def test_dockerfiles_pass_hadolint():
    for dockerfile in sorted((REPO / "images").glob("*.Dockerfile")):
        result = subprocess.run(["hadolint", str(dockerfile)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
    assert {p.name for p in (REPO / "images").glob("*.Dockerfile")} == {"source.Dockerfile", "server.Dockerfile"}


def test_one_failed_source_pod_does_not_end_the_others():
    """Each index gets one try (a retry would train its shard twice) and any number of
    indexes may fail without the Job controller stopping the rest."""
    docs, _ = render({"sources": 5})
    spec = one(docs, "Job", "source")["spec"]
    assert spec["completionMode"] == "Indexed" and spec["backoffLimitPerIndex"] == 0
    assert spec["maxFailedIndexes"] == 5 and spec["backoffLimit"] == 5
    env = env_of(one(docs, "Job", "source")["spec"]["template"]["spec"]["containers"][0], one(docs, "ConfigMap"))
    assert env["SPLITTEST_DROP"] == ""
    docs, _ = render({"faults": {"drop": "3@25"}})
    assert one(docs, "ConfigMap")["data"]["SPLITTEST_DROP"] == "3@25"


# -- CURVE: the chart makes the release's keys -----------------------------------------------
KEYS_DIR = "/etc/splittest/keys"


def pod_specs(docs):
    """The server's, the sources' and the `helm test` probe's pod specs."""
    return {"server": one(docs, "Job", "server")["spec"]["template"]["spec"],
            "source": one(docs, "Job", "source")["spec"]["template"]["spec"],
            "probe": one(docs, "Pod", "probe")["spec"]}


def secret_keys(secret):
    """The Secret's files as the pods see them (``data`` is base64, ``stringData`` plain)."""
    import base64

    files = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    files.update(secret.get("stringData") or {})
    return files


def test_the_z85_claim_behind_randalphanum_40():
    """Every alphanumeric character is a Z85 digit (at most 61), and no 5 of them can
    overflow a 32-bit group: so any 40 of them are a valid CURVE secret key."""
    import string

    import zmq
    from zmq.utils import z85

    alphabet = z85.Z85CHARS.decode()
    assert max(alphabet.index(c) for c in string.ascii_letters + string.digits) == 61
    assert sum(61 * 85 ** i for i in range(5)) == 3222145721 < 2 ** 32
    assert len(zmq.curve_public(b"Z" * 40)) == 40 and len(z85.decode(b"Z" * 40)) == 32  # the largest groups


def test_the_release_has_its_own_curve_keys_mounted_read_only_into_its_pods():
    import zmq

    docs, notes = render()
    secret = one(docs, "Secret")
    assert secret["metadata"]["name"] == "splittest-keys" and secret["type"] == "Opaque"
    files = secret_keys(secret)
    assert sorted(files) == ["server-secret", "source-secret"]
    for key in files.values():
        assert len(key) == 40 and key.isalnum() and key.isascii()
        assert len(zmq.curve_public(key.encode())) == 40
    assert files["server-secret"] != files["source-secret"]
    again = secret_keys(one(render()[0], "Secret"))
    assert not set(again.values()) & set(files.values())  # random per install
    for role, spec in pod_specs(docs).items():
        [volume] = [v for v in spec["volumes"] if v["name"] == "keys"]
        assert volume["secret"] == {"secretName": "splittest-keys", "defaultMode": 0o400}, role
        assert spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsUser"] == 10001, role
        [container] = spec["containers"]
        [mount] = [m for m in container["volumeMounts"] if m["name"] == "keys"]
        assert mount == {"name": "keys", "mountPath": KEYS_DIR, "readOnly": True}, role
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert env["SPLITTEST_KEYS"] == KEYS_DIR, role
    assert "SPLITTEST_KEYS" not in one(docs, "ConfigMap")["data"]
    assert "CURVE" in notes and "splittest-keys" in notes
    for value in files.values():  # the keys are in the Secret only
        assert not any(value in json.dumps(d) for d in docs if d["kind"] != "Secret")
        assert value not in notes


def test_with_a_data_volume_the_sources_mount_both():
    docs, _ = render(VALUE_SETS[3])
    spec = pod_specs(docs)["source"]
    assert [v["name"] for v in spec["volumes"]] == ["data", "tmp", "keys"]
    assert [(m["mountPath"], m.get("readOnly")) for m in spec["containers"][0]["volumeMounts"]] == [
        ("/data", True), ("/tmp", None), (KEYS_DIR, True)]


def test_curve_disabled_is_plaintext_with_no_secret_and_no_mount():
    values = {"curve": {"enabled": False}}
    assert helm_python.lint(str(CHART), values, strict=True)["errors"] == []
    docs, notes = render(values)
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "Job", "Job", "NetworkPolicy", "Pod", "Service"]
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    for role, spec in pod_specs(docs).items():
        assert [v["name"] for v in spec["volumes"]] == ["tmp"], role
        [container] = spec["containers"]
        assert [m["name"] for m in container["volumeMounts"]] == ["tmp"], role
        assert "SPLITTEST_KEYS" not in {e["name"] for e in container.get("env", [])}, role
    assert "plaintext" in notes
    docs, _ = render({**VALUE_SETS[3], **values})
    spec = pod_specs(docs)["source"]
    assert [v["name"] for v in spec["volumes"]] == ["data", "tmp"]
    with pytest.raises(helm_python.HelmValuesError, match="curve"):
        render({"curve": {"enabled": "yes"}})



# -- values as `helm install --set` gives them -------------------------------------------------
def readme_helm_installs():
    """Every `helm install` of this chart (./charts) in the README's code blocks, as its argument
    list (the KubeRay charts the README installs for sweeps are not this chart)."""
    import re
    import shlex

    text = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip().startswith("helm install") and "./charts" in line:
                commands.append(shlex.split(line, comments=True))
    return commands


def set_values(words):
    """What Helm's own `--set` parser makes of the command's --set arguments (later ones win)."""
    values: dict = {}

    def merge(into, new):
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = value

    for flag, arg in zip(words, words[1:]):
        if flag == "--set":
            merge(values, helm_python.parse_set_string(arg))
        elif flag.startswith("--set="):
            merge(values, helm_python.parse_set_string(flag.split("=", 1)[1]))
    return values


def test_the_readmes_helm_install_commands_render_as_written():
    commands = readme_helm_installs()
    assert commands, "the README shows no helm install command"
    for words in commands:
        values = set_values(words)
        assert helm_python.lint(str(CHART), values, strict=True)["errors"] == [], words
        docs, _ = render(values)
        for doc in docs:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert set_values(["helm", "install", "splittest", "./charts", "--set", "sources=8", "--set", "cpu=0.4"]) == {
        "sources": 8, "cpu": "0.4"}  # Helm's --set makes only whole numbers numbers


@pytest.mark.parametrize("cpu, millis, threads", [
    ("0.4", "400m", "1"), ("2", "2000m", "2"), ("1.5", "1500m", "2"), (".25", "250m", "1"), ("400m", "400m", "1"),
    (0.4, "400m", "1"), (3, "3000m", "3")])
def test_cpu_as_set_gives_it(cpu, millis, threads):
    docs, notes = render(set_values(["--set", f"cpu={cpu}"]) if isinstance(cpu, str) else {"cpu": cpu})
    container = one(docs, "Job", "source")["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["cpu"] == container["resources"]["requests"]["cpu"] == millis
    assert env_of(container, one(docs, "ConfigMap"))["SPLITTEST_THREADS"] == threads
    assert f"at {millis} CPU each" in notes


@pytest.mark.parametrize("cpu", ["0", "0.0", "-1", "abc", "1.2.3", "0m", ""])
def test_cpu_strings_that_are_no_positive_quantity_are_rejected(cpu):
    with pytest.raises(helm_python.HelmValuesError, match="at '/cpu'"):
        render({"cpu": cpu})


def test_integers_render_as_integers():
    expression = "workload.seed=12345678,sources=3,ttlSecondsAfterFinished=10000000,server.port=6000"
    docs, _ = render(helm_python.parse_set_string(expression))
    assert one(docs, "ConfigMap")["data"]["SPLITTEST_SEED"] == "12345678"
    docs, _ = render({"workload": {"seed": 12345678}, "ttlSecondsAfterFinished": 10000000, "sources": 1000000})
    assert one(docs, "ConfigMap")["data"]["SPLITTEST_SEED"] == "12345678"
    server, sources = one(docs, "Job", "server"), one(docs, "Job", "source")
    assert sources["spec"]["ttlSecondsAfterFinished"] == server["spec"]["ttlSecondsAfterFinished"] == 10000000
    assert sources["spec"]["completions"] == 1000000
    env = {e["name"]: e.get("value") for e in server["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SPLITTEST_EXPECT_SOURCES"] == "1000000"


@pytest.mark.parametrize("values, where, key", [
    ({"workload": {"batch_size": 8}}, "/workload", "batch_size"),
    ({"server": {"gpu": 1}}, "/server", "gpu"),
    ({"source": {"replytimeout": 9}}, "/source", "replytimeout"),
    ({"images": {"server": {"repository": "r", "tag": "t", "digest": "x"}}}, "/images/server", "digest"),
    ({"data": {"pvcs": "x"}}, "/data", "pvcs"),
    ({"networkPolicy": {"enable": False}}, "/networkPolicy", "enable"),
    ({"probe": {"securitycontext": {}}}, "/probe", "securitycontext"),
    ({"cpus": 1}, "", "cpus"),
])
def test_unknown_keys_are_rejected_with_their_path(values, where, key):
    with pytest.raises(helm_python.HelmValuesError, match=f"at '{where}': additional properties '{key}' not allowed"):
        render(values)


def test_every_object_of_the_schema_the_chart_owns_rejects_unknown_keys():
    """Kubernetes' own objects (security contexts, volume sources, tolerations) stay open."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    open_objects = {"podSecurityContext", "securityContext", "volume", "nodeSelector", "affinity"}

    def walk(node, name):
        if node.get("type") == "object" and name not in open_objects:
            assert node.get("additionalProperties") is False, name
        for key, child in node.get("properties", {}).items():
            walk(child, key)
        for key, child in node.get("$defs", {}).items():
            walk(child, key)

    walk(schema, "(values)")


# -- the restricted Pod Security Standard -----------------------------------------------------
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}
BASELINE_CAPABILITIES = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                         "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}


def restricted_violations(spec):
    """Each rule of the "restricted" Pod Security Standard (baseline's included) that the pod
    spec breaks, as https://kubernetes.io/docs/concepts/security/pod-security-standards/ names them."""
    problems = []
    pod = spec.get("securityContext") or {}
    containers = [*spec.get("initContainers", []), *spec["containers"], *spec.get("ephemeralContainers", [])]
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            problems.append(f"host namespaces: {field}")
    if (pod.get("windowsOptions") or {}).get("hostProcess"):
        problems.append("HostProcess")
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if "hostPath" in kinds:
            problems.append(f"hostPath volume {volume['name']}")
        if not kinds <= RESTRICTED_VOLUMES:
            problems.append(f"volume type {sorted(kinds)} of {volume['name']}")
    for sysctl in pod.get("sysctls", []):
        problems.append(f"sysctl {sysctl['name']}")  # none is needed; the safe set is not checked here
    for name, context in [("pod", pod)] + [(c["name"], c.get("securityContext") or {}) for c in containers]:
        if (context.get("seLinuxOptions") or {}).get("type") not in (None, "", "container_t", "container_init_t",
                                                                       "container_kvm_t", "container_engine_t"):
            problems.append(f"{name}: SELinux type")
        if (context.get("seLinuxOptions") or {}).get("user") or (context.get("seLinuxOptions") or {}).get("role"):
            problems.append(f"{name}: SELinux user/role")
        if context.get("runAsUser") == 0:
            problems.append(f"{name}: runAsUser 0")
        if context.get("runAsNonRoot") is False:
            problems.append(f"{name}: runAsNonRoot false")
        seccomp = (context.get("seccompProfile") or {}).get("type")
        if seccomp not in (None, "RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccomp {seccomp}")
        apparmor = (context.get("appArmorProfile") or {}).get("type")
        if apparmor not in (None, "RuntimeDefault", "Localhost"):
            problems.append(f"{name}: AppArmor {apparmor}")
    for container in containers:
        name, context = container["name"], container.get("securityContext") or {}
        if context.get("privileged"):
            problems.append(f"{name}: privileged")
        if (context.get("windowsOptions") or {}).get("hostProcess"):
            problems.append(f"{name}: HostProcess")
        if context.get("procMount", "Default") != "Default":
            problems.append(f"{name}: procMount")
        if any(port.get("hostPort") for port in container.get("ports", [])):
            problems.append(f"{name}: hostPort")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        if context.get("runAsNonRoot", pod.get("runAsNonRoot")) is not True:
            problems.append(f"{name}: runAsNonRoot is not true")
        if (context.get("seccompProfile") or pod.get("seccompProfile") or {}).get("type") not in (
                "RuntimeDefault", "Localhost"):
            problems.append(f"{name}: no seccompProfile RuntimeDefault or Localhost")
        capabilities = context.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            problems.append(f"{name}: capabilities do not drop ALL")
        added = set(capabilities.get("add") or [])
        if not added <= {"NET_BIND_SERVICE"} or not added <= BASELINE_CAPABILITIES:
            problems.append(f"{name}: capabilities add {sorted(added)}")
    return problems


def all_pod_specs(docs):
    specs = {}
    for doc in docs:
        if doc["kind"] == "Pod":
            specs[doc["metadata"]["name"]] = doc["spec"]
        elif doc["kind"] in ("Job", "Deployment", "StatefulSet", "DaemonSet"):
            specs[doc["metadata"]["name"]] = doc["spec"]["template"]["spec"]
    return specs


def test_the_checker_sees_each_rule_broken():
    docs, _ = render()
    good = pod_specs(docs)["source"]
    assert restricted_violations(good) == []
    import copy

    for breaks in [lambda s: s.update(hostNetwork=True),
                   lambda s: s["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
                   lambda s: s["securityContext"].pop("runAsNonRoot"),
                   lambda s: s["securityContext"].update(runAsUser=0),
                   lambda s: s["securityContext"].pop("seccompProfile"),
                   lambda s: s["containers"][0]["securityContext"].pop("allowPrivilegeEscalation"),
                   lambda s: s["containers"][0]["securityContext"].update(privileged=True),
                   lambda s: s["containers"][0]["securityContext"].update(capabilities={"add": ["SYS_ADMIN"]}),
                   lambda s: s["containers"][0]["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]),
                   lambda s: s["containers"][0].update(ports=[{"containerPort": 1, "hostPort": 1}])]:
        spec = copy.deepcopy(good)
        breaks(spec)
        assert restricted_violations(spec), spec
    spec = copy.deepcopy(good)
    spec["containers"][0]["securityContext"]["capabilities"]["add"] = ["NET_BIND_SERVICE"]
    assert restricted_violations(spec) == []


@pytest.mark.parametrize("values", VALUE_SETS + [
    {"curve": {"enabled": False}}, {"data": {"pvc": "cifar10"}}, {"networkPolicy": {"enabled": False}},
    {"podSecurityContext": {"runAsUser": None, "fsGroup": None}}], ids=range(len(VALUE_SETS) + 4))
def test_every_pod_meets_the_restricted_pod_security_standard(values):
    docs, _ = render(values)
    specs = all_pod_specs(docs)
    assert len(specs) == 3
    for name, spec in specs.items():
        assert restricted_violations(spec) == [], name
        assert spec["automountServiceAccountToken"] is False, name
        for container in spec["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
            assert {m["mountPath"]: m["name"] for m in container["volumeMounts"]}["/tmp"] == "tmp", name
            env = {e["name"]: e.get("value") for e in container["env"]}
            for variable in ("HOME", "TMPDIR", "XDG_CACHE_HOME", "TORCH_HOME", "MPLCONFIGDIR"):
                assert env[variable].startswith("/tmp"), (name, variable)
        assert {v["name"]: v for v in spec["volumes"]}["tmp"]["emptyDir"] == {"sizeLimit": "1Gi"}, name


def test_security_contexts_are_overridable_chart_wide_and_per_role():
    for template in (CHART / "templates").rglob("*.yaml"):
        assert "10001" not in template.read_text(), template  # the UID is a value, not in a template
    openshift = set_values(["--set", "podSecurityContext.runAsUser=null", "--set", "podSecurityContext.fsGroup=null"])
    docs, _ = render(openshift)
    for role, spec in pod_specs(docs).items():
        assert spec["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}, role
    docs, _ = render({"server": {"securityContext": {"readOnlyRootFilesystem": False},
                                 "podSecurityContext": {"runAsUser": 2000, "fsGroup": 3000}},
                      "probe": {"podSecurityContext": {"seccompProfile": {"type": "Localhost",
                                                                          "localhostProfile": "p.json"}}}})
    specs = pod_specs(docs)
    server = specs["server"]
    assert server["containers"][0]["securityContext"] == {"allowPrivilegeEscalation": False,
                                                          "readOnlyRootFilesystem": False,
                                                          "capabilities": {"drop": ["ALL"]}}
    assert server["securityContext"]["runAsUser"] == 2000 and server["securityContext"]["fsGroup"] == 3000
    assert specs["source"]["securityContext"]["runAsUser"] == 10001  # the other roles keep the defaults
    assert specs["source"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    assert specs["probe"]["securityContext"]["seccompProfile"] == {"type": "Localhost", "localhostProfile": "p.json"}
    assert restricted_violations(specs["probe"]) == []
    again, _ = render()  # merging never changes the chart's defaults for the next render
    assert pod_specs(again)["server"]["securityContext"]["runAsUser"] == 10001


# -- GPU, lifetime, fidelity --------------------------------------------------------------------
def test_the_server_is_a_job_that_ends_after_its_sources_said_bye():
    docs, _ = render({"sources": 5})
    job = one(docs, "Job", "server")
    assert job["spec"]["backoffLimit"] == 0 and "activeDeadlineSeconds" not in job["spec"]
    assert job["spec"]["ttlSecondsAfterFinished"] == 86400
    pod = job["spec"]["template"]
    assert pod["spec"]["restartPolicy"] == "Never"
    env = env_of(pod["spec"]["containers"][0], one(docs, "ConfigMap"))
    assert env["SPLITTEST_EXPECT_SOURCES"] == "5"
    # the Service reaches the server pod, and only it
    selector = one(docs, "Service")["spec"]["selector"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "server"  # what testbed collect looks for
    assert not selector.items() <= one(docs, "Job", "source")["spec"]["template"]["metadata"]["labels"].items()
    docs, _ = render({"server": {"activeDeadlineSeconds": 7200}})
    assert one(docs, "Job", "server")["spec"]["activeDeadlineSeconds"] == 7200


def test_gpu_toleration_runtime_class_and_cpu_request():
    docs, _ = render()
    spec = one(docs, "Job", "server")["spec"]["template"]["spec"]
    assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert "runtimeClassName" not in spec
    assert spec["containers"][0]["resources"]["requests"]["cpu"] == "1"
    docs, _ = render({"server": {"gpus": 0, "runtimeClassName": "nvidia", "cpu": ""}})
    spec = one(docs, "Job", "server")["spec"]["template"]["spec"]
    assert "tolerations" not in spec and spec["runtimeClassName"] == "nvidia"
    assert "cpu" not in spec["containers"][0]["resources"]["requests"]
    for cpu, quantity in (("2.5", "2.5"), (4, "4"), ("500m", "500m")):
        docs, _ = render({"server": {"cpu": cpu}})
        spec = one(docs, "Job", "server")["spec"]["template"]["spec"]
        assert spec["containers"][0]["resources"]["requests"]["cpu"] == quantity
    with pytest.raises(helm_python.HelmValuesError, match="/server/cpu"):
        render({"server": {"cpu": "lots"}})


def test_sources_spread_over_the_nodes():
    docs, _ = render()
    [constraint] = one(docs, "Job", "source")["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert constraint == {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway",
                          "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "splittest",
                                                            "app.kubernetes.io/instance": "splittest",
                                                            "app.kubernetes.io/component": "source"}}}
    zone = {"maxSkew": 2, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": {"matchLabels": {"tier": "edge"}}}
    docs, _ = render({"source": {"topologySpreadConstraints": [zone]}})
    assert one(docs, "Job", "source")["spec"]["template"]["spec"]["topologySpreadConstraints"] == [zone]
    docs, _ = render({"source": {"topologySpreadConstraints": []}})
    assert "topologySpreadConstraints" not in one(docs, "Job", "source")["spec"]["template"]["spec"]


# -- conventions --------------------------------------------------------------------------------
def test_name_overrides():
    docs, _ = render({"nameOverride": "sl"}, release="bench")
    assert one(docs, "Service")["metadata"]["name"] == "bench-sl-server"
    assert all(d["metadata"]["labels"]["app.kubernetes.io/name"] == "sl" for d in docs)
    env = env_of(one(docs, "Job", "source")["spec"]["template"]["spec"]["containers"][0], one(docs, "ConfigMap"))
    assert env["SPLITTEST_SERVER"] == "tcp://bench-sl-server:5555"
    docs, _ = render({"fullnameOverride": "run7"}, release="bench")
    assert sorted(d["metadata"]["name"] for d in docs) == ["run7-keys", "run7-server", "run7-server", "run7-server",
                                                          "run7-sources", "run7-spec", "run7-test-server"]
    docs, _ = render(release="bench")
    assert one(docs, "Service")["metadata"]["name"] == "bench-splittest-server"


def test_the_chart_label_is_a_valid_label_value_with_a_build_version(tmp_path):
    import shutil

    chart = tmp_path / "charts"
    shutil.copytree(CHART, chart)
    (chart / "Chart.yaml").write_text((chart / "Chart.yaml").read_text().replace("version: 0.1.0",
                                                                                 "version: 0.1.0+build.7"))
    rendered = helm_python.Chart.load(str(chart)).render({}, name="splittest", namespace="bench", is_install=True)
    docs = [d for n, text in rendered.items() if n.endswith(".yaml") for d in yaml.safe_load_all(text) if d]
    for doc in docs:
        assert doc["metadata"]["labels"]["helm.sh/chart"] == "splittest-0.1.0_build.7"
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_network_policy_can_be_turned_off():
    docs, _ = render({"networkPolicy": {"enabled": False}})
    assert "NetworkPolicy" not in {d["kind"] for d in docs}
    assert helm_python.lint(str(CHART), {"networkPolicy": {"enabled": False}}, strict=True)["errors"] == []


def test_a_data_pvc_is_mounted_read_only_in_the_sources():
    values = set_values(["--set", "data.pvc=cifar10"])
    assert helm_python.lint(str(CHART), values, strict=True)["errors"] == []
    docs, _ = render(values)
    spec = pod_specs(docs)["source"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["data"] == {"name": "data", "persistentVolumeClaim": {"claimName": "cifar10", "readOnly": True}}
    [container] = spec["containers"]
    assert {"name": "data", "mountPath": "/data", "readOnly": True} in container["volumeMounts"]
    assert env_of(container, one(docs, "ConfigMap"))["SPLITTEST_DATA_DIR"] == "/data"
    for role in ("server", "probe"):
        assert "data" not in {v["name"] for v in pod_specs(docs)[role]["volumes"]}, role
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    docs, _ = render({"sources": 1, "data": {"pvc": "cifar10", "download": True}})  # the one that downloads needs to write
    assert {v["name"]: v for v in pod_specs(docs)["source"]["volumes"]}["data"]["persistentVolumeClaim"][
        "readOnly"] is False
    docs, _ = render()
    assert "data" not in {v["name"] for v in pod_specs(docs)["source"]["volumes"]}
    assert "SPLITTEST_DATA_DIR" not in env_of(pod_specs(docs)["source"]["containers"][0], one(docs, "ConfigMap"))
    with pytest.raises(Exception, match="data.pvc and data.volume"):
        render({"data": {"pvc": "a", "volume": {"persistentVolumeClaim": {"claimName": "b"}}}})


@pytest.mark.parametrize("values, problem", [
    ({"data": {"pvc": "a", "volume": {"emptyDir": {}}}}, "data.pvc and data.volume: set one of them"),
    ({"data": {"download": True}}, "data.download needs data.pvc or data.volume"),
    ({"sources": 8, "data": {"download": True, "pvc": "cifar10"}}, "data.download with more than one source"),
])
def test_data_settings_that_cannot_work_are_refused(values, problem):
    with pytest.raises(Exception, match=problem):
        render(values)


def test_one_source_may_download_into_its_claim():
    docs, _ = render({"sources": 1, "data": {"download": True, "pvc": "cifar10"}})
    pod = one(docs, "Job", "source")["spec"]["template"]["spec"]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "data")
    assert mount["readOnly"] is False and one(docs, "ConfigMap")["data"]["SPLITTEST_DOWNLOAD"] == "true"


# -- links: the bandwidth annotations of each source pod --------------------------------------
EGRESS, INGRESS = "kubernetes.io/egress-bandwidth", "kubernetes.io/ingress-bandwidth"


def source_jobs(docs):
    return [d for d in docs if d["kind"] == "Job" and d["metadata"]["labels"]["app.kubernetes.io/component"] == "source"]


def links_by_source(docs, configmap=None):
    """{source id: (egress, ingress)} as the pods would carry them, with the id each pod's
    program reads (SPLITTEST_SOURCE_ID); an Indexed Job's pods: ids 0..completions-1."""
    links = {}
    for job in source_jobs(docs):
        template = job["spec"]["template"]
        annotations = template["metadata"]["annotations"]
        link = (annotations.get(EGRESS), annotations.get(INGRESS))
        [env] = [e for e in template["spec"]["containers"][0]["env"] if e["name"] == "SPLITTEST_SOURCE_ID"]
        if job["spec"].get("completionMode") == "Indexed":
            assert env["valueFrom"]["fieldRef"]["fieldPath"].endswith("['batch.kubernetes.io/job-completion-index']")
            links.update({i: link for i in range(job["spec"]["completions"])})
        else:
            assert env["value"] == annotations["splittest/source-id"]
            links[int(env["value"])] = link
    return links


def test_one_link_for_every_source_is_one_indexed_job_with_both_annotations():
    docs, notes = render({"sources": 4, "link": {"bandwidth": "5mbit"}})
    [job] = source_jobs(docs)
    assert job["metadata"]["name"] == "splittest-sources" and job["spec"]["completionMode"] == "Indexed"
    annotations = job["spec"]["template"]["metadata"]["annotations"]
    assert annotations[EGRESS] == annotations[INGRESS] == "5M"  # 5mbit = 5,000,000 bit/s
    assert "splittest/source-id" not in annotations
    assert "bandwidth plugin" in notes
    docs, _ = render({"sources": 4, "link": {"bandwidth": "2mbit/20Mbit"}})  # UP/DOWN: egress is the uplink
    assert links_by_source(docs) == {i: ("2M", "20M") for i in range(4)}
    docs, _ = render({"link": {"bandwidth": {"egress": "1mbps"}}})  # one direction only; mbps: bytes/s
    assert links_by_source(docs)[0] == ("8M", None)
    docs, notes = render()  # no link: no annotation, nothing said
    assert links_by_source(docs) == {i: (None, None) for i in range(8)} and "bandwidth" not in notes


def test_sources_on_different_links_are_one_job_each_with_their_own_annotations():
    values = {"sources": 5, "link": {"perSource": ["0.94mbit/2.02mbit", {"egress": "5.95mbit"}, "5mbit"]}}
    assert helm_python.lint(str(CHART), values, strict=True)["errors"] == []
    docs, _ = render(values)
    jobs = source_jobs(docs)
    assert [j["metadata"]["name"] for j in jobs] == [f"splittest-source-{i}" for i in range(5)]
    # the list is cycled by source index: sources 3 and 4 get items 0 and 1 again
    assert links_by_source(docs) == {0: ("940k", "2020k"), 1: ("5950k", None), 2: ("5M", "5M"),
                                     3: ("940k", "2020k"), 4: ("5950k", None)}
    for job in jobs:  # one try, and a failed source ends only its own Job
        assert job["spec"]["completions"] == job["spec"]["parallelism"] == 1 and job["spec"]["backoffLimit"] == 0
        assert "completionMode" not in job["spec"] and "maxFailedIndexes" not in job["spec"]
        assert job["metadata"]["labels"]["app.kubernetes.io/component"] == "source"
        spec = job["spec"]["template"]["spec"]
        assert restricted_violations(spec) == [] and spec["containers"][0]["resources"]["limits"]["cpu"] == "400m"
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    # the NetworkPolicy lets every one of them reach the server
    allowed = one(docs, "NetworkPolicy")["spec"]["ingress"][0]["from"][0]["podSelector"]["matchExpressions"]
    labels = jobs[3]["spec"]["template"]["metadata"]["labels"]
    assert all(labels[e["key"]] in e["values"] for e in allowed)


def test_a_per_source_list_of_one_link_stays_one_indexed_job():
    for values in ({"sources": 3, "link": {"perSource": ["5mbit", "5mbit"]}},
                   {"sources": 1, "link": {"perSource": ["1mbit", "2mbit"]}}):
        docs, _ = render(values)
        [job] = source_jobs(docs)
        assert job["spec"]["completionMode"] == "Indexed", values
    assert links_by_source(docs) == {0: ("1M", "1M")}


@pytest.mark.parametrize("rate", ["5mbit", "0.94mbit", "5.95mbit", "1gbit", "100gbit", "8kbit", "8000bit", "12345bit",
                                  ".5mbit", "2.5kbps", "1mbps", "1gbps", "65MBIT", "20Mbit"])
def test_the_chart_turns_rates_into_the_bits_per_second_the_testbed_means(rate):
    """The annotations are quantities in bit/s (the kubelet and containerd take
    Quantity.Value() as the CNI plugin's rate in bits); tc's kbit/mbit/gbit are 1000-based
    and bps is bytes/s, as testbed run --bandwidth parses them."""
    from kubernetes.utils import parse_quantity

    from testbed.links.values import parse_rate

    docs, _ = render({"sources": 1, "link": {"bandwidth": rate}})
    egress, ingress = links_by_source(docs)[0]
    assert egress == ingress and parse_quantity(egress) == parse_rate(rate)
    assert parse_quantity(egress) == int(parse_quantity(egress))  # whole bits, no "5950000m"


@pytest.mark.parametrize("link, problem", [
    ({"bandwidth": "5mb"}, "at '/link/bandwidth'"),
    ({"bandwidth": "5M"}, "at '/link/bandwidth'"),  # a quantity is not --bandwidth's syntax
    ({"bandwidth": "fast"}, "at '/link/bandwidth'"),
    ({"bandwidth": "1mbit/2mbit/3mbit"}, "at '/link/bandwidth'"),
    ({"bandwidth": 5}, "at '/link/bandwidth'"),
    ({"perSource": ["5mbit", "x"]}, "at '/link/perSource/1'"),
    ({"perSource": [{"up": "5mbit"}]}, "additional properties 'up' not allowed"),
    ({"perSource": [{"egress": "5mbit/1mbit"}]}, "at '/link/perSource/0'"),
    ({"perSource": "5mbit"}, "at '/link/perSource'"),
    ({"rate": "5mbit"}, "additional properties 'rate' not allowed"),
])
def test_bad_link_values_are_rejected_by_the_schema(link, problem):
    with pytest.raises(helm_python.HelmValuesError, match=problem.replace("(", r"\(")):
        render({"link": link})


@pytest.mark.parametrize("link, problem", [
    ({"bandwidth": "1kbit"}, "link: 1kbit is outside 8kbit..100gbit"),  # the kubelet refuses < 1kbit
    ({"perSource": ["5mbit", "200gbit"]}, "link: 200gbit is outside 8kbit..100gbit"),
    ({"bandwidth": "0mbit"}, "outside"),
    ({"bandwidth": "5mbit", "perSource": ["1mbit"]}, "link.bandwidth and link.perSource: set one of them"),
])
def test_link_values_that_cannot_work_are_refused(link, problem):
    with pytest.raises(Exception, match=problem):
        render({"sources": 2, "link": link})


@pytest.mark.parametrize("values", [{}, {"server": {"gpus": 0}}, {"sources": 1000, "memory": "256Mi"}])
def test_every_container_has_cpu_and_memory_requests_and_limits(values):
    """What a scanner (checkov's CKV_K8S_10..13) asks of every container: the server's, the
    sources' and the helm test probe's."""
    docs, _ = render(values)
    for role, spec in pod_specs(docs).items():
        for container in spec["containers"]:
            resources = container["resources"]
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources[kind]), (role, kind, resources)
    source = pod_specs(docs)["source"]["containers"][0]["resources"]
    assert source["limits"]["memory"] == source["requests"]["memory"] == values.get("memory", "2Gi")
    server = pod_specs(docs)["server"]["containers"][0]["resources"]
    assert server["requests"]["cpu"] == "1" and server["limits"]["cpu"] == "4"
