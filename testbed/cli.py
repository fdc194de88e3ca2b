"""The ``testbed`` command."""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from . import __version__
from .errors import Exit, exit_status
from .runner import collect_release, report, run
from .spec import RunSpec, validate
from .sweep.spec import SCALES


GROUPS = {"run": "the run", "workload": "the workload", "data": "data", "knob": "compression module knobs",
          "adapt": "adaptive compression (--adapt: the level follows the measured link)",
          "link": "emulated links (every source behind its own shaped link; Linux, as root)",
          "k8s": "Kubernetes backend (--backend k8s)"}


def _run_parser(sub) -> argparse.ArgumentParser:
    """``testbed run``'s options: every declared option that is a choice of the run."""
    from workloads.compression.registry import readers
    from workloads.settings import add_argument

    from .options import run_options

    p = sub.add_parser("run", help="run the split-training benchmark (local processes by default)",
                       description="Run the same split-training workload for each arm (module), one after "
                                   "the other, and compare traffic and throughput. `testbed modules` lists the "
                                   "modules and their knobs.")
    groups = {name: p.add_argument_group(title) for name, title in GROUPS.items()}
    for option in run_options():
        default = option.run_default if option.run_default is not None else option.default
        valid = option.describe_range()
        who = f"{', '.join(readers(option))}: " if option.group == "knob" else ""
        add_argument(groups[option.group], option, default,
                     f"{who}{option.help} (default {default!r}{'; ' + valid if valid else ''})".replace("%", "%%"),
                     convert_only=True)  # validate() checks the whole spec, one line per problem
    return p


def _cluster_options(parser) -> None:
    from workloads.settings import add_argument

    from .options import option

    for name in ("namespace", "kube-context"):
        declared = option(name)
        add_argument(parser, declared, declared.default, f"{declared.help} (default {declared.default!r})")


def build_parser() -> argparse.ArgumentParser:
    from workloads.settings import OneLineParser

    parser = OneLineParser(prog="testbed", description="splittest: compression-aware split learning testbed")
    parser.add_argument("--version", action="version", version=f"splittest {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    _run_parser(sub)
    report = sub.add_parser("report", help="draw the comparison figures and report.md of run directories",
                            description="Write the traffic, throughput, summary and accuracy figures (PNG and SVG) "
                                        "and report.md for one or more run directories, drawn together.")
    report.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (from any backend)")
    report.add_argument("--out", default="", help="output folder (default: RUN_DIR/report for one run, "
                                                 "./runs/report-<time> for several)")
    report.add_argument("--quiet", action="store_true", help="print nothing but errors and warnings")
    sub.add_parser("modules", help="list the compression modules: paper, knobs, what runs where",
                   description="The compression modules of the registry, with their knobs and defaults.")
    _sweep_parser(sub)
    _reproduce_parser(sub)
    collect = sub.add_parser("collect", help="gather the traces of a release installed with helm install",
                             description="Collect every pod's trace lines of a splittest release into a run "
                                         "directory, then write its summary and report.")
    collect.add_argument("release", help="the Helm release name")
    _cluster_options(collect)
    collect.add_argument("--out", default="", help="run directory (default: ./runs/<release>)")
    collect.add_argument("--quiet", action="store_true", help="print nothing but errors and warnings")
    return parser


def _sweep_parser(sub) -> None:
    sweep = sub.add_parser("sweep", help="run the trials of a sweep spec (experiments/*.toml) on Ray (k8s: one after "
                           "another)",
                           description="Run every trial of a sweep spec (a grid over modules, knobs, seeds, data, "
                                       "bandwidths; experiments/ holds examples) on Ray (a k8s spec's one after "
                                       "another from here, without Ray), each an ordinary run directory, then write sweep.json, sweep.csv and the sweep's figures. Running "
                                       "it again reruns no trial that finished.")
    sweep.add_argument("spec", metavar="SPEC", help="the sweep spec, a .toml or .yaml file")
    sweep.add_argument("--out", default="", help="sweep folder (default: ./runs/sweep-<name>[-<scale>]; the same "
                                                 "folder resumes)")
    sweep.add_argument("--scale", choices=SCALES, default=None,
                       help="apply the spec's [scale.smoke], [scale.medium] or [scale.paper] settings")
    sweep.add_argument("--address", default="", help="join this Ray cluster (ray start --head; KubeRay: the head "
                                                     "service, e.g. ray://HEAD:10001) instead of a local Ray")
    sweep.add_argument("--cpus", type=float, default=None,
                       help="CPUs of the local Ray (default: this machine's cores)")
    sweep.add_argument("--quiet", action="store_true", help="print nothing but errors and warnings")


def _reproduce_parser(sub) -> None:
    from .reproduce import experiments

    names = experiments()
    one = sub.add_parser("reproduce", help="reproduce a paper's figure or table: its sweep, then its claims",
                         description="Run the sweep of one paper experiment (experiments/reproduce/NAME.toml) on Ray, "
                                     "then write reproduce.md: whether the paper's ordering holds, in words, the "
                                     "paper's values beside the measured ones, and the figures. Experiments: "
                                     + ", ".join(names) + ".")
    one.add_argument("name", metavar="NAME", choices=names, help="the experiment: " + ", ".join(names))
    one.add_argument("--scale", choices=SCALES, default="smoke",
                     help="smoke: minutes on 2 CPU cores (small model, small data, few epochs: the shape); medium: at "
                          "most 30 minutes on 2 CPU cores, two seeds, long enough that the differences exceed the "
                          "seeds' spread (where the spec has a [scale.medium]); paper: the paper's settings, "
                          "for a GPU or a cluster, CIFAR-10 from --data-dir (default smoke)")
    one.add_argument("--data-dir", default="", help="folder holding the dataset (torchvision's layout), for every "
                                                    "trial")
    one.add_argument("--out", default="", help="folder (default: ./runs/reproduce-NAME-SCALE; the same folder "
                                               "resumes)")
    one.add_argument("--address", default="", help="join this Ray cluster instead of a local Ray")
    one.add_argument("--cpus", type=float, default=None, help="CPUs of the local Ray (default: this machine's cores)")
    one.add_argument("--quiet", action="store_true", help="print nothing but errors and warnings")


def sweep_command(args, say) -> int:
    from .sweep import default_out, load_spec, run_sweep

    spec = load_spec(args.spec, args.scale)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    out = Path(args.out) if args.out else default_out(spec)
    return run_sweep(spec, out, address=args.address or None, cpus=args.cpus, say=say, bar=not args.quiet)


def spec_from_args(args) -> RunSpec:
    from .options import run_options
    return RunSpec(**{o.dest: getattr(args, o.dest) for o in run_options()})


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    say = (lambda *a, **k: None) if getattr(args, "quiet", False) else print
    return exit_status(lambda: COMMANDS[args.command](args, say))


def run_command(args, say) -> int:
    spec = spec_from_args(args)
    validate(spec)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # stop like Ctrl-C: clean up first
    if spec.sweep_bandwidth:
        from .sweep import sweep_bandwidth
        return sweep_bandwidth(spec, say)
    return run(spec, say)


def reproduce_command(args, say) -> int:
    from .reproduce import reproduce_command

    signal.signal(signal.SIGTERM, _raise_interrupt)
    return reproduce_command(args.name, scale=args.scale, out=args.out, data_dir=args.data_dir,
                             address=args.address or None, cpus=args.cpus, say=say, bar=not args.quiet)


def _modules(args, say) -> int:
    print(modules_table())
    return Exit.OK


COMMANDS = {
    "run": run_command,
    "modules": _modules,
    "report": lambda args, say: report(args.runs, args.out, say),
    "sweep": sweep_command,
    "reproduce": reproduce_command,
    "collect": lambda args, say: collect_release(args.release, namespace=args.namespace,
                                                 context=args.kube_context or None, out=args.out, say=say),
}


def modules_table() -> str:
    """The registry on the terminal, a block per module: what a user needs to choose an arm."""
    import textwrap

    from workloads.compression import get

    from .generate import module_facts

    blocks = []
    for facts in module_facts():
        lines = [f"{facts['module']}  (paper {facts['paper']})"]
        for key in ("what crosses the cut", "knobs", "at the source", "at the server", "split", "server lr scale"):
            lines += textwrap.wrap(f"{key}: {facts[key]}", 96, initial_indent="  ", subsequent_indent="      ")
        deviations = get(facts["module"]).deviations
        lines.append(f"  deviations from paper {facts['paper']}:" + ("" if deviations else " none declared"))
        for d in deviations:
            for key, text in (("- the paper", d.paper), ("  here", d.ours), ("  why", d.why)):
                lines += textwrap.wrap(f"{key}: {text}", 96, initial_indent="    ", subsequent_indent="        ")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
