"""The GPU check's command: the CUDA refusal, the installs, then the parts in RUN_ORDER within the time
budget, the report rewritten after each (the package docstring has the whole story). Also the entry of the
nccl part's torchrun ranks (``--nccl-worker``)."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks.speed.gpu_check.faiss_part import faiss_part
from benchmarks.speed.gpu_check.nccl import nccl_part
from benchmarks.speed.gpu_check.nccl import worker_main as nccl_worker_main
from benchmarks.speed.gpu_check.precision import precision_part
from benchmarks.speed.gpu_check.startup import (
    NO_CUDA_EXIT,
    RUN_ORDER,
    Context,
    activate_site,
    cuda_refusal,
    environment_report,
    exit_status,
    install_wheels,
    parse_args,
    run_part,
    wheels_to_install,
    write_report,
)
from benchmarks.speed.gpu_check.throughput import throughput_part

PART_FUNCTIONS: dict[str, Callable[[argparse.Namespace, Context], dict]] = {
    "throughput": throughput_part, "nccl": nccl_part, "faiss": faiss_part, "precision": precision_part}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--nccl-worker" in argv:  # a torchrun rank of the nccl part
        return nccl_worker_main(argv)
    started_clock = time.monotonic()
    args = parse_args(argv)
    refusal = None if args.cpu_rehearsal else cuda_refusal()
    if refusal is not None:
        print(refusal, file=sys.stderr)
        return NO_CUDA_EXIT
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    context = Context(out=args.out.resolve(), work_dir=args.work_dir.resolve(),
                      deadline=started_clock + args.time_budget, wheels=args.wheels.resolve() if args.wheels else None,
                      device="cpu" if args.cpu_rehearsal else "cuda")
    installed, method = install_brought_wheels(context)

    try:
        environment = environment_report(installed, method)
    except Exception as error:  # a version query must not cost the check
        environment = {"error": repr(error), "gpus": [], "installed_from_wheels": installed, "install_method": method}
    report = {"command": shlex.join([Path(sys.executable).name, "-m", "benchmarks.speed.gpu_check", *argv]),
              "cpu_rehearsal": args.cpu_rehearsal,
              "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "time_budget_s": args.time_budget,
              "environment": environment, "parts": {}}
    print(f"gpu_check: {environment.get('gpus')}, torch {environment.get('torch')}; installed "
          f"{installed or 'nothing'} ({method}); report in {context.out}", flush=True)
    write_report(context.out, report)
    for name in RUN_ORDER:
        if name not in args.parts:
            continue
        print(f"gpu_check: {name} ...", flush=True)
        report["parts"][name] = run_part(name, PART_FUNCTIONS[name], args, context)
        print(f"gpu_check: {name}: {report['parts'][name]['status']}: {report['parts'][name]['summary']}", flush=True)
        write_report(context.out, report)
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    report["seconds"] = round(time.monotonic() - started_clock, 1)
    json_path, markdown_path = write_report(context.out, report)
    print(markdown_path.read_text())
    print(f"gpu_check: wrote {json_path} and {markdown_path} in {report['seconds']} s")
    return exit_status(report)


def install_brought_wheels(context: Context) -> tuple[list[str], str]:
    """Install the wheels of ``--wheels`` this Python lacks into work_dir/site, put that folder on the path
    (here and in every child process); (the wheels installed, how)."""
    context.work_dir.mkdir(parents=True, exist_ok=True)
    site = context.work_dir / "site"
    installed: list[str] = []
    method = "no --wheels given"
    if context.wheels is not None:
        if not context.wheels.is_dir():
            print(f"gpu_check: --wheels {context.wheels} is not a folder (run make gpu-wheels and carry wheels/)",
                  file=sys.stderr)
        else:
            wheels = wheels_to_install(context.wheels)
            method = install_wheels(wheels, site)
            installed = [path.name for path in wheels]
    activate_site(site)
    return installed, method
