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
    return p


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
    return parser


def spec_from_args(args) -> RunSpec:
    return RunSpec(sources=args.sources, cpu=args.cpu, modules=tuple(m.strip() for m in args.module.split(",") if m.strip()),
                   budget=args.budget, schedule=args.schedule, batch_size=args.batch_size, batches=args.batches,
                   epochs=args.epochs, split=args.split, model=args.model, dataset=args.dataset,
                   data_dir=args.data_dir, download=args.download, eval_samples=args.eval_samples, seed=args.seed,
                   lr=args.lr, port=args.port, cap_method=args.cap_method, device=args.device, out=args.out,
                   extra={k: v for k in ("lr_boost", "boost_epochs", "resolution")
                          if (v := getattr(args, k)) is not None})


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    say = (lambda *a, **k: None) if getattr(args, "quiet", False) else print
    if args.command == "report":
        return report(args.runs, args.out, say)
    try:
        spec = spec_from_args(args)
        validate(spec)
    except SpecError as exc:
        print(f"testbed: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    signal.signal(signal.SIGTERM, _raise_interrupt)  # stop like Ctrl-C: clean up first
    return run(spec, say)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def run(spec: RunSpec, say=print) -> int:
    from .local import BackendError, run_arm
    from .progress import Progress
    from .summary import compare, format_table, summarise_arm
    from .traces import TraceError

    run_id = dt.datetime.now().strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
    out = Path(spec.out or Path("runs") / run_id)
    try:
        out.mkdir(parents=True, exist_ok=False)
    except OSError as exc:
        print(f"testbed: error: cannot create run directory {out}: {exc.strerror}", file=sys.stderr)
        return EXIT_BAD_INPUT
    data = data_in_use(spec)
    if data.startswith("synthetic") and spec.dataset == "cifar10":
        say(f"note: {data}; training on the deterministic synthetic CIFAR-shaped dataset")
    manifest = _manifest(spec, run_id, data)
    _write_json(out / "manifest.json", manifest)
    say(f"run {run_id}: {spec.sources} sources at {spec.cpu} CPU, arms {', '.join(spec.modules)} -> {out}")
    arms, status = {}, "failed"
    try:
        for module in spec.modules:
            directory = out / module
            progress = None if say is not print else Progress(directory, module, spec.sources, spec.batches, spec.epochs)
            say(f"arm {module}: starting the server and {spec.sources} sources")
            result = run_arm(spec, module, directory, run_id, progress=progress,
                             warn=lambda m: print(m, file=sys.stderr))
            manifest["cap"] = {"method": result.cap_method, "detail": result.cap_description}
            arms[module] = summarise_arm(directory, module, spec.sources, spec.cpu, result.cap_method)
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
    summary = {"run": run_id, "arms": arms, "comparison": compare(arms)}
    _write_json(out / "summary.json", summary)
    say(format_table(summary))
    say(f"summary: {out / 'summary.json'}")
    return report([out], "", say)


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


def _manifest(spec: RunSpec, run_id: str, data: str) -> dict:
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
        "backend": "local",
    }


def _write_json(path: Path, value) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())
