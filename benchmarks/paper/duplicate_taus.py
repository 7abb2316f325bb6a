"""Which temperatures the dataset-scope oracle gave the duplicated captions of a duplicate_captions split.

    python -m benchmarks.paper.duplicate_taus --shards runs/duplicate-captions/train \\
        runs/pretrained-duplicates/dataset-oracle-level-seed{0,1,2}

The DRO rule is meant to warm an anchor whose competitors include exact copies of its positive:
ties with the positive add entropy that only a larger tau can keep at KL = rho. This checks
whether it did. For each run (a ``dataset-oracle`` run trained on ``--shards``), its last
checkpoint's per-sample tables (the taus of the last refresh, image and text) are grouped by the
sample's caption in ``--shards``:

* ``planted``: anchors and partners of duplicate_captions (metadata ``duplicate_of``), whose caption
  it gave to one or two other pictures;
* ``repeated``: other samples whose exact caption occurs more than once (the source's own repeats);
* ``unique``: the rest.

Per group and modality: the number of samples, the geometric mean and the median tau. The output
is a Markdown table (stdout, and ``--output`` when given).
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import torch

from benchmarks.paper.coarse_captions import clean_samples
from clipdro.checkpoint import load_checkpoint, resolve_checkpoint
from clipdro.errors import UsageError

GROUPS = ("planted", "repeated", "unique")


def caption_groups(shards: Path) -> list[str]:
    """The group (one of ``GROUPS``) of every sample of ``shards``, in sample-id order."""
    captions, planted = [], set()
    for position, sample in clean_samples(shards):
        captions.append(sample.caption)
        if "duplicate_of" in sample.metadata:
            planted.update((position, sample.metadata["duplicate_of"]))
    counts = collections.Counter(captions)
    return ["planted" if position in planted else "repeated" if counts[caption] > 1 else "unique"
            for position, caption in enumerate(captions)]


def oracle_tables(run_dir: Path) -> dict[str, torch.Tensor]:
    """{"image": taus, "text": taus} of the last checkpoint of a dataset-oracle run."""
    state = load_checkpoint(resolve_checkpoint(run_dir))
    loss = state.get("loss") or {}
    if "image_taus" not in loss or "text_taus" not in loss:
        raise UsageError(f"{run_dir}: not a dataset-oracle run (its checkpoint has no per-sample tau tables)")
    return {"image": loss["image_taus"].float(), "text": loss["text_taus"].float()}


def group_summary(taus: torch.Tensor, groups: list[str]) -> dict[str, dict[str, float | int]]:
    """{group: {"count", "geometric_mean", "median"}} of ``taus`` (one per sample) by ``groups``."""
    if len(taus) != len(groups):
        raise UsageError(f"the run has {len(taus)} samples, the shards {len(groups)}: not the run's training data")
    summary = {}
    for group in GROUPS:
        members = torch.tensor([name == group for name in groups])
        if members.any():
            selected = taus[members]
            summary[group] = {"count": int(members.sum()), "geometric_mean": float(selected.log().mean().exp()),
                              "median": float(selected.median())}
    return summary


def markdown(rows: list[tuple[str, str, dict]]) -> str:
    present = [group for group in GROUPS if any(group in summary for _, _, summary in rows)]
    header = " | ".join(f"{group}: geo-mean / median (n)" for group in present)
    lines = [f"| run | side | {header} |", "|---|---|" + "---|" * len(present)]
    for run, side, summary in rows:
        cells = [f"{summary[group]['geometric_mean']:.4f} / {summary[group]['median']:.4f} "
                 f"({summary[group]['count']})" if group in summary else "–" for group in present]
        lines.append(f"| {run} | {side} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="dataset-oracle run folders")
    parser.add_argument("--shards", type=Path, required=True, help="the duplicate_captions folder they trained on")
    parser.add_argument("--output", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)
    try:
        groups = caption_groups(args.shards)
        rows = [(run.name, side, group_summary(taus, groups))
                for run in args.runs for side, taus in oracle_tables(run).items()]
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    text = markdown(rows)
    if args.output is not None:
        args.output.write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
