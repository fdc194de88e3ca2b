"""One declaration per fact: an option declared once reaches the three parsers, the
validation, the chart (values, schema, ConfigMap, rendered by the real Helm library)
and the values the Kubernetes backend sets; module facts live in the registry."""
import json
import re
import shutil

import helm_python
import pytest
import yaml

from testbed import generate
from testbed.cli import build_parser
from testbed.k8s import chart_values
from testbed.spec import RunSpec, SpecError, validate
from workloads import settings
from workloads.compression import MACHINERY, available, get, modules
from workloads.settings import Option

from conftest import REPO

pytestmark = pytest.mark.quick  # every test here is fast: the quick tier (-m quick)

THROWAWAY = Option("throwaway-knob", int, 7, "a knob that exists only in this test", min=1,
                   chart="workload.throwawayKnob", group="knob")


def test_a_new_option_is_one_declaration_and_reaches_every_place(tmp_path):
    with settings.declared(THROWAWAY):
        for role in ("source", "server"):
            args = settings.parse(role, "test", ["--throwaway-knob", "3"])
            assert args.throwaway_knob == 3
            assert settings.effective(args, role)["throwaway_knob"] == 3
        run = build_parser().parse_args(["run", "--throwaway-knob", "5"])
        assert run.throwaway_knob == 5
        spec = RunSpec(throwaway_knob=5, backend="k8s")
        assert spec.as_dict()["throwaway_knob"] == 5  # the manifest's spec
        assert "--throwaway-knob" in settings.to_argv(spec.workload_options("none"), "source")
        assert chart_values(spec, "none", "r1")["workload"]["throwawayKnob"] == 5
        with pytest.raises(SpecError, match="--throwaway-knob must be at least 1, got 0"):
            validate(RunSpec(throwaway_knob=0, backend="k8s"))
        outputs = generate.outputs()
        # the files on disk no longer match: the drift check would fail
        assert outputs[generate.CHART / "values.yaml"] != (generate.CHART / "values.yaml").read_text()
        chart = tmp_path / "charts"
        shutil.copytree(generate.CHART, chart)
        for path, text in outputs.items():
            if path.is_relative_to(generate.CHART):
                (chart / path.relative_to(generate.CHART)).write_text(text)
    values = yaml.safe_load((chart / "values.yaml").read_text())
    assert values["workload"]["throwawayKnob"] == 7
    schema = json.loads((chart / "values.schema.json").read_text())
    assert schema["properties"]["workload"]["properties"]["throwawayKnob"] == {
        "type": "integer", "description": THROWAWAY.help, "minimum": 1}
    rendered = helm_python.Chart.load(str(chart)).render({"workload": {"throwawayKnob": 12345678}},
                                                         name="t", namespace="n", is_install=True)
    configmap = next(yaml.safe_load(text) for name, text in rendered.items() if name.endswith("configmap.yaml"))
    assert configmap["data"]["SPLITTEST_THROWAWAY_KNOB"] == "12345678"  # never 1.2345678e+07
    with pytest.raises(helm_python.HelmValuesError, match="minimum"):
        helm_python.Chart.load(str(chart)).render({"workload": {"throwawayKnob": 0}}, name="t", namespace="n",
                                                  is_install=True)
    assert "throwaway_knob" not in settings.defaults()  # gone with the declaration


def test_the_generated_files_match_the_declarations(capsys):
    code = generate.main(["--check"])  # python -m testbed.generate --check, in this process
    assert code == 0, capsys.readouterr().err


def test_the_chart_rejects_an_unknown_workload_key():
    with pytest.raises(helm_python.HelmValuesError, match="batch_size"):
        helm_python.Chart.load(str(generate.CHART)).render({"workload": {"batch_size": 8}}, name="t",
                                                           namespace="n", is_install=True)


def test_chart_values_outside_the_workload_block_have_the_declared_defaults():
    values = yaml.safe_load((generate.CHART / "values.yaml").read_text())
    for option in generate.chart_options():
        node = values
        for key in option.chart.split("."):
            node = node[key]
        expected = "" if option.dest == "run_id" else option.default  # the release name stands in for it
        if option.default == "" and node != "":  # "" in a run leaves the chart's own value (--memory: 2Gi)
            from testbed.k8s.values import chart_values
            from testbed.spec import RunSpec
            given = chart_values(RunSpec(backend="k8s"), "none", "r")
            for key in option.chart.split(".")[:-1]:
                given = given.get(key, {})
            assert option.chart.split(".")[-1] not in given, option.chart
            continue
        assert node == expected, option.chart


def test_every_program_option_reaches_kubernetes_or_is_refused_there():
    """A choice of the run that the programs read either has a chart value or is marked
    local_only (then a k8s run refuses it unless it is at its default)."""
    for option in settings.options():
        if set(option.roles) & set(settings.PROGRAMS) and not option.per_process:
            assert option.chart or option.local_only, option.name
    with pytest.raises(SpecError, match="--device is for the local backend only"):
        validate(RunSpec(backend="k8s", device="cpu"))
    with pytest.raises(SpecError, match="--data-dir is for the local backend only.*data.volume"):
        validate(RunSpec(backend="k8s", data_dir="/data"))


def test_every_option_reaches_kubernetes_with_the_specs_value():
    spec = RunSpec(backend="k8s", resolution=2, momentum=0.5, download=True, timeout=60.0, seed=3)
    values = chart_values(spec, "filter", "run/filter")
    assert values["workload"]["resolution"] == 2 and values["workload"]["momentum"] == 0.5
    assert values["data"]["download"] is True and values["source"]["replyTimeout"] == 60.0
    assert values["runId"] == "run/filter" and values["workload"]["module"] == "filter"
    assert chart_values(spec, "jpeg", "r")["workload"]["split"] == 0  # an input module's arm runs at split 0


@pytest.fixture
def no_splittest_environment(monkeypatch):
    import os

    for name in [n for n in os.environ if n.startswith("SPLITTEST_")]:
        monkeypatch.delenv(name)


@pytest.mark.parametrize("argv, message", [
    (["--quality", "0"], "--quality must be between 1 and 100, got 0"),
    (["--module", "zip"], "unknown module 'zip'"),
    (["--lr", "-1"], "--lr must be positive"),
    (["--batches", "x"], "--batches must be an integer"),
])
def test_the_programs_check_each_value_by_its_declaration(argv, message, program, no_splittest_environment):
    result = program("source", *argv)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_a_bad_environment_value_names_the_variable(program, no_splittest_environment, monkeypatch):
    monkeypatch.setenv("SPLITTEST_MOMENTUM", "2")
    result = program("server", "--help")
    assert result.returncode == 2
    assert "SPLITTEST_MOMENTUM='2': --momentum must be between 0 and 1, got 2.0" in result.stderr


def test_modules_lists_every_module_with_its_knobs(cli):
    result = cli("modules")
    assert result.returncode == 0, result.stderr
    names = [line.split()[0] for line in result.stdout.splitlines() if line and not line.startswith(" ")]
    assert names == available()
    mcr2 = result.stdout.split("\nmcr2")[1].split("\n\n")[0]
    assert "--latent-dim 64" in mcr2 and "server lr scale: 0.1" in mcr2 and "what crosses the cut: head" in mcr2


def test_the_registry_holds_the_module_facts():
    assert {m.name for m in modules() if m.input_only} == {"cdc", "raw", "jpeg", "webp"}
    assert get("mcr2").server_lr_scale == get("entropic").server_lr_scale == 0.1
    assert get("filter").schedule(4, 128, 4) == ((4, 4),)
    assert get("deprune").schedule(4, 128, 4) == ((4, 3), (128, 1))
    assert get("prune").schedule(4, 128, 4) == ((128, 2), (32, 1), (4, 1))
    assert get("none").schedule is None
    for m in modules():
        assert m.paper and m.description and m.at_source and m.at_server, m.name
    with pytest.raises(ValueError, match="--keep-neurons must be between 0 \\(all\\) and --latent-dim \\(8\\)"):
        get("mcr2").check_config(RunSpec(latent_dim=8, keep_neurons=9).compression_config())


def test_no_code_branches_on_a_module_name_outside_the_modules_files():
    names = "|".join(available())
    quoted = re.compile(rf"[\"']({names})[\"']")
    own = {f"workloads/compression/{p.name}" for p in (REPO / "workloads" / "compression").glob("*.py")
           if p.stem not in MACHINERY | {"__init__"}}
    allowed = {
        "workloads/settings.py": {"none"},     # the programs' default module
        "analysis/metrics/__init__.py": {"none"},  # the baseline arm ratios compare with
        "analysis/figures.py": {"none"},       # the lost-sources cell when none was lost
        "analysis/summary.py": {"none"},
        "analysis/sweep.py": {"none"},         # the baseline series of the time-to-accuracy target
        "analysis/plots.py": set(available()),  # one colour per module in every figure (data, not branches)
        "testbed/cpucap.py": {"none"},         # the cap method "none", not a module
        "testbed/pinning.py": {"none"},        # the pinning method "none"
        "testbed/options.py": {"none"},
        "testbed/runner.py": {"none"},         # the cap method "none": no cap to judge against
    }
    for path in sorted(REPO.glob("*/**/*.py")):
        relative = str(path.relative_to(REPO))
        if relative.startswith(("tests/", "benchmarks/")) or relative in own:
            continue
        found = set(quoted.findall(path.read_text()))
        assert found <= allowed.get(relative, set()), f"{relative} names modules {sorted(found)}"


def test_a_part_gets_only_the_knobs_its_program_reads():
    """A knob is parsed by the programs its declaration names; a part built by another
    program that reads it fails loudly instead of silently taking the default."""
    from workloads.compression import CompressionConfig, create_server, create_source
    from workloads.models import build_split_model

    server_config = CompressionConfig(model="vgg11-slim", program="server")
    with pytest.raises(AttributeError, match="knob 'budget' is not read by the server program"):
        server_config.budget
    for m in modules():  # every part is built with what its own program parses
        cut = build_split_model("vgg11-slim", 0 if m.input_only else 2, 10).cut_shape
        create_server(m.name, cut, server_config)
        create_source(m.name, cut, CompressionConfig(model="vgg11-slim", program="source"))
