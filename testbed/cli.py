"""The ``testbed`` command."""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import sys
import uuid
from pathlib import Path

from . import __version__
from .spec import DEFAULT_ARMS, RunSpec, SpecError, data_in_use, validate

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


def _run_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("run", help="run the split-training benchmark (local processes by default)",
                       description="Run the same split-training workload for each arm (module), one after "
                                   "the other, and compare traffic and throughput.")
    d = RunSpec()
    p.add_argument("--sources", type=int, default=d.sources, help="data sources (default %(default)s)")
    p.add_argument("--cpu", type=float, default=d.cpu, help="CPU cap per source, in cores (default %(default)s)")
    p.add_argument("--module", default=",".join(DEFAULT_ARMS),
                   help="arm(s), comma-separated (default: none,filter)")
    p.add_argument("--budget", type=int, default=d.budget, help="feature maps across the cut (default %(default)s)")
    p.add_argument("--schedule", default="", help="budget schedule BUDGET:EPOCHS,... (default: the module's)")
    p.add_argument("--lr-boost", type=float, default=None, help="gamma: lr factor after a budget change (default 2)")
    p.add_argument("--boost-epochs", type=int, default=None, help="lk: epochs the boost lasts (default 1)")
    p.add_argument("--resolution", type=int, default=None, help="resolution compression factor r of the filter modules (default 1: off)")
    p.add_argument("--quality", type=int, default=None, help="jpeg / webp quality 1-100 (default 75)")
    p.add_argument("--channels", type=int, default=None, help="crbq: maps after channel reduction (default: cut/8)")
    p.add_argument("--mask-number", type=int, default=None, help="cdc: mask number m in 0..4 (default 2)")
    p.add_argument("--mask-schedule", default=None, help="cdc: M:EPOCHS,... mask numbers over the epochs")
    p.add_argument("--alpha", type=float, default=None, help="cdc: EC loss attenuation 1/alpha (default 48)")
    p.add_argument("--latent-dim", type=int, default=None, help="mcr2: bottleneck neurons (default 64)")
    p.add_argument("--keep-neurons", type=int, default=None, help="mcr2: neurons sent, best by Fisher power (default all)")
    p.add_argument("--beta", type=float, default=None, help="entropic: weight of the rate (default 1)")
    p.add_argument("--latent-channels", type=int, default=None, help="entropic: latent maps (default 16)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="default %(default)s")
    p.add_argument("--batches", type=int, default=d.batches, help="batches per epoch (default %(default)s)")
    p.add_argument("--epochs", type=int, default=d.epochs, help="default %(default)s")
    p.add_argument("--split", type=int, default=d.split, help="split after this conv block (default %(default)s)")
    p.add_argument("--model", default=d.model, help="default %(default)s")
    p.add_argument("--dataset", default=d.dataset, help="cifar10 or synthetic (default %(default)s)")
    p.add_argument("--data-dir", default="", help="folder with CIFAR-10 in torchvision's layout")
    p.add_argument("--download", action="store_true", help="download CIFAR-10 into --data-dir if missing")
    p.add_argument("--eval-samples", type=int, default=d.eval_samples, help="test samples per epoch (default %(default)s)")
    p.add_argument("--lr", type=float, default=d.lr, help="learning rate (default %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="default %(default)s")
    p.add_argument("--port", type=int, default=d.port, help="server port (default %(default)s)")
    p.add_argument("--cap-method", default=d.cap_method, help="auto, cgroup, psutil or none (default %(default)s)")
    p.add_argument("--device", default=d.device, help="server device: auto, cpu or cuda (default %(default)s)")
    p.add_argument("--out", default="", help="run directory (default: a new folder under ./runs/)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    k8s = p.add_argument_group("Kubernetes backend (--backend k8s)")
    p.add_argument("--backend", default="local", help="local (processes on this machine) or k8s (default %(default)s)")
    _cluster_options(k8s)
    k8s.add_argument("--keep", action="store_true", help="leave each arm's release installed")
    k8s.add_argument("--source-image", default="", help="source image REPO:TAG (default: the chart's)")
    k8s.add_argument("--server-image", default="", help="server image REPO:TAG (default: the chart's)")
    k8s.add_argument("--gpus", type=int, default=1, help="GPUs for the server (0: CPU) (default %(default)s)")
    k8s.add_argument("--wait", type=float, default=3600.0, help="seconds to wait for an arm's sources (default %(default)s)")
    return p


def _cluster_options(group) -> None:
    group.add_argument("--namespace", default="default", help="namespace (default %(default)s)")
    group.add_argument("--kube-context", default=None, help="kubeconfig context (default: the current one)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="testbed", description="splittest: compression-aware split learning testbed")
    parser.add_argument("--version", action="version", version=f"splittest {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parser(sub)
    report = sub.add_parser("report", help="draw the comparison figures and report.md of run directories",
                            description="Write the traffic, throughput, summary and accuracy figures (PNG and SVG) "
                                        "and report.md for one or more run directories, drawn together.")
    report.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (from any backend)")
    report.add_argument("--out", default="", help="output folder (default: RUN_DIR/report for one run, "
                                                 "./runs/report-<time> for several)")
    report.add_argument("--quiet", action="store_true", help="print nothing but errors and warnings")
    collect = sub.add_parser("collect", help="gather the traces of a release installed with helm install",
                             description="Collect every pod's trace lines of a splittest release into a run "
                                         "directory, then write its summary and report.")
    collect.add_argument("release", help="the Helm release name")
    _cluster_options(collect)
    collect.add_argument("--out", default="", help="run directory (default: ./runs/<release>)")
    collect.add_argument("--quiet", action="store_true", help="print nothing but errors and warnings")
    return parser


def spec_from_args(args) -> RunSpec:
    return RunSpec(sources=args.sources, cpu=args.cpu, modules=tuple(m.strip() for m in args.module.split(",") if m.strip()),
                   budget=args.budget, schedule=args.schedule, batch_size=args.batch_size, batches=args.batches,
                   epochs=args.epochs, split=args.split, model=args.model, dataset=args.dataset,
                   data_dir=args.data_dir, download=args.download, eval_samples=args.eval_samples, seed=args.seed,
                   lr=args.lr, port=args.port, cap_method=args.cap_method, device=args.device, out=args.out,
                   backend=args.backend,
                   extra={k: v for k in ("lr_boost", "boost_epochs", "resolution", "quality", "channels", "mask_number", "mask_schedule", "alpha",
                                    "latent_dim", "keep_neurons", "beta", "latent_channels")
                          if (v := getattr(args, k)) is not None})


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    say = (lambda *a, **k: None) if getattr(args, "quiet", False) else print
    if args.command == "report":
        return report(args.runs, args.out, say)
    if args.command == "collect":
        return collect_release(args, say)
    try:
        spec = spec_from_args(args)
        validate(spec)
    except SpecError as exc:
        print(f"testbed: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    signal.signal(signal.SIGTERM, _raise_interrupt)  # stop like Ctrl-C: clean up first
    if spec.backend == "k8s":
        from .k8s import Cluster, ClusterError, KubernetesBackend
        try:
            cluster = Cluster(namespace=args.namespace, context=args.kube_context)
            say(f"cluster: Kubernetes {cluster.check_reachable()}, namespace {args.namespace}")
        except ClusterError as exc:
            print(f"testbed: error: {exc}", file=sys.stderr)
            return EXIT_FAILED
        return run(spec, say, KubernetesBackend(spec, cluster, keep=args.keep, source_image=args.source_image,
                                                server_image=args.server_image, gpus=args.gpus,
                                                wait_s=args.wait, say=say))
    return run(spec, say)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def run(spec: RunSpec, say=print, backend=None) -> int:
    from .errors import BackendError
    from .local import LocalBackend
    from .summary import compare, summarise_arm
    from .traces import TraceError

    run_id = dt.datetime.now().strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
    out = Path(spec.out or Path("runs") / run_id)
    try:
        out.mkdir(parents=True, exist_ok=False)
    except OSError as exc:
        print(f"testbed: error: cannot create run directory {out}: {exc.strerror}", file=sys.stderr)
        return EXIT_BAD_INPUT
    backend = backend or LocalBackend(spec, say)
    data = data_in_use(spec)
    if data.startswith("synthetic") and spec.dataset == "cifar10":
        say(f"note: {data}; training on the deterministic synthetic CIFAR-shaped dataset")
    manifest = _manifest(spec, run_id, data, backend.name)
    _write_json(out / "manifest.json", manifest)
    say(f"run {run_id}: {spec.sources} sources at {spec.cpu} CPU, arms {', '.join(spec.modules)} -> {out}")
    arms, status = {}, "failed"
    try:
        for module in spec.modules:
            result = backend.run_arm(module, out / module, run_id)
            manifest["cap"] = {"method": result.cap_method, "detail": result.cap_description}
            arms[module] = summarise_arm(out / module, module, spec.sources, spec.cpu, result.cap_method)
        status = "ok"
    except KeyboardInterrupt:
        status = "interrupted"
        print("testbed: interrupted; every process was stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (BackendError, TraceError) as exc:
        print(f"testbed: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        manifest["status"] = status
        manifest["finished"] = dt.datetime.now().isoformat(timespec="seconds")
        _write_json(out / "manifest.json", manifest)
    return _finish(out, {"run": run_id, "arms": arms, "comparison": compare(arms)}, say)


def _finish(out: Path, summary: dict, say) -> int:
    from .summary import format_table

    _write_json(out / "summary.json", summary)
    say(format_table(summary))
    say(f"summary: {out / 'summary.json'}")
    return report([out], "", say)


def collect_release(args, say=print) -> int:
    """`testbed collect RELEASE`: a run directory from a release installed by hand."""
    from .k8s import Cluster, ClusterError, collect
    from .summary import compare, summarise_arm
    from .traces import TraceError

    out = Path(args.out or Path("runs") / args.release)
    try:
        cluster = Cluster(namespace=args.namespace, context=args.kube_context)
        staging = out / "_collecting"
        found = collect(cluster, args.release, staging)
        module = found["module"] or "unknown"
        staging.rename(out / module)
        manifest = {"run": args.release, "backend": "k8s", "release": args.release, "namespace": args.namespace,
                    "collected": dt.datetime.now().isoformat(timespec="seconds"),
                    "spec": {"sources": found["sources"], "cpu": found["cpu_cap"], "modules": [module]},
                    "cap": {"method": "kubernetes", "detail": "resources.limits.cpu per source pod"}}
        _write_json(out / "manifest.json", manifest)
        arms = {module: summarise_arm(out / module, module, found["sources"], found["cpu_cap"], "kubernetes")}
    except (ClusterError, TraceError, OSError) as exc:
        print(f"testbed: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    say(f"collected {found['pods']} pods of release {args.release} -> {out}")
    return _finish(out, {"run": args.release, "arms": arms, "comparison": compare(arms)}, say)


def report(run_dirs, out: str, say=print) -> int:
    from analysis import RunDirError, write_report

    target = Path(out) if out else (Path(run_dirs[0]) / "report" if len(run_dirs) == 1
                                    else Path("runs") / ("report-" + dt.datetime.now().strftime("%Y%m%d-%H%M%S")))
    try:
        result = write_report(run_dirs, target)
    except RunDirError as exc:
        print(f"testbed: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for problem in result.problems:
        print(f"testbed: warning: {problem}", file=sys.stderr)
    say(f"report: {result.markdown} ({len(result.figures) // 2} figures)")
    return 0


def _manifest(spec: RunSpec, run_id: str, data: str, backend: str) -> dict:
    import numpy
    import torch
    import zmq

    return {
        "run": run_id,
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "command": sys.argv,
        "spec": spec.as_dict(),
        "data": data,
        "versions": {"splittest": __version__, "python": platform.python_version(), "torch": torch.__version__,
                     "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version(), "numpy": numpy.__version__},
        "host": {"cores": os.cpu_count(), "platform": platform.platform(), "machine": platform.machine(),
                 "cuda": torch.cuda.is_available()},
        "backend": backend,
    }


def _write_json(path: Path, value) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())
