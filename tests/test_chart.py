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
    {"source": {"egressBandwidth": "20M", "nodeSelector": {"role": "edge"}},
     "server": {"gpus": 2, "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]},
     "data": {"volume": {"persistentVolumeClaim": {"claimName": "cifar10"}}}, "imagePullSecrets": [{"name": "reg"}]},
]


@pytest.mark.parametrize("values", VALUE_SETS, ids=range(len(VALUE_SETS)))
def test_lint_is_clean_and_every_object_passes_the_kubernetes_schemas(values):
    result = helm_python.lint(str(CHART), values, strict=True)
    assert result["errors"] == [], result
    docs, _ = render(values)
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "Deployment", "Job", "NetworkPolicy", "Pod", "Secret",
                                               "Service"]
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "splittest" and labels["app.kubernetes.io/instance"] == "splittest"
        assert labels["app.kubernetes.io/managed-by"] == "Helm" and "app.kubernetes.io/version" in labels


def test_eight_sources_at_0_4_cpu_and_a_gpu_server():
    docs, notes = render({"sources": 8, "cpu": 0.4})
    job = one(docs, "Job")
    assert job["spec"]["completions"] == 8 and job["spec"]["parallelism"] == 8
    assert job["spec"]["completionMode"] == "Indexed"
    source = job["spec"]["template"]["spec"]["containers"][0]
    assert source["resources"]["limits"]["cpu"] == "400m"
    assert source["command"] == ["python", "-m", "workloads.source"]
    server = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
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
    server = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in server["resources"]["limits"]
    assert env_of(server, one(docs, "ConfigMap"))["SPLITTEST_DEVICE"] == "cpu"
    job = one(docs, "Job")
    assert job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] == "1500m"
    docs, _ = render(VALUE_SETS[3])
    pod = one(docs, "Job")["spec"]["template"]
    assert pod["metadata"]["annotations"]["kubernetes.io/egress-bandwidth"] == "20M"
    assert pod["spec"]["nodeSelector"] == {"role": "edge"}
    assert pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "cifar10"
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["tolerations"][0]["key"] == "gpu"


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
    spec = one(docs, "Job")["spec"]
    assert spec["completionMode"] == "Indexed" and spec["backoffLimitPerIndex"] == 0
    assert spec["maxFailedIndexes"] == 5 and spec["backoffLimit"] == 5
    env = env_of(one(docs, "Job")["spec"]["template"]["spec"]["containers"][0], one(docs, "ConfigMap"))
    assert env["SPLITTEST_DROP"] == ""
    docs, _ = render({"faults": {"drop": "3@25"}})
    assert one(docs, "ConfigMap")["data"]["SPLITTEST_DROP"] == "3@25"


# -- CURVE: the chart makes the release's keys -----------------------------------------------
KEYS_DIR = "/etc/splittest/keys"


def pod_specs(docs):
    """The server's, the sources' and the `helm test` probe's pod specs."""
    return {"server": one(docs, "Deployment")["spec"]["template"]["spec"],
            "source": one(docs, "Job")["spec"]["template"]["spec"],
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
    assert [v["name"] for v in spec["volumes"]] == ["data", "keys"]
    assert [m["mountPath"] for m in spec["containers"][0]["volumeMounts"]] == ["/data", KEYS_DIR]


def test_curve_disabled_is_plaintext_with_no_secret_and_no_mount():
    values = {"curve": {"enabled": False}}
    assert helm_python.lint(str(CHART), values, strict=True)["errors"] == []
    docs, notes = render(values)
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "Deployment", "Job", "NetworkPolicy", "Pod", "Service"]
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    for role, spec in pod_specs(docs).items():
        assert "volumes" not in spec and "fsGroup" not in spec["securityContext"], role
        [container] = spec["containers"]
        assert "volumeMounts" not in container, role
        assert "SPLITTEST_KEYS" not in {e["name"] for e in container.get("env", [])}, role
    assert "plaintext" in notes
    docs, _ = render({**VALUE_SETS[3], **values})
    spec = pod_specs(docs)["source"]
    assert [v["name"] for v in spec["volumes"]] == ["data"]
    with pytest.raises(helm_python.HelmValuesError, match="curve"):
        render({"curve": {"enabled": "yes"}})

