"""`clipdro export RUN_DIR_OR_FILE --output model.pt [--tempnets tempnets.pt]`: a run -> open_clip weights.

The weights file is the open_clip model's ``state_dict`` (clipdro's ``CLIPWithTempNets`` keys
without their ``clip.`` prefix), written with ``torch.save``: plain tensors only, so open_clip
loads it with ``weights_only=True`` and ``open_clip.create_model_and_transforms(name,
pretrained="model.pt")`` rebuilds the trained model exactly. The model name must be known to
open_clip: a built-in architecture, one of clipdro's shipped configs (after
``register_model_configs()``) or a JSON config file (after ``open_clip.add_model_config``); the
command prints the lines that load the file.

The TempNets (tempnet runs only) go to a separate file, since open_clip has no place for them::

    {"format": "clipdro-tempnets/1",
     "image": {"init_args": {...}, "state_dict": {...}}, "text": {...},
     "source": {"checkpoint": "...", "step": 123, "model": "clipdro-tiny-vit"}}

so that ``CLIPTempNet(**file["image"]["init_args"]).load_state_dict(file["image"]["state_dict"])``
rebuilds each net (also ``weights_only``-loadable).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clipdro.checkpoint import save_atomic
from clipdro.errors import UsageArgumentParser, UsageError
from clipdro.model_configs import shipped_model_names
from clipdro.trained_run import TrainedRun, load_trained_run

TEMPNETS_FORMAT = "clipdro-tempnets/1"


@dataclass
class OpenCLIPModelRef:
    """How open_clip names the exported architecture, and the setup line(s) that make the name known."""

    name: str
    setup: list[str]  # python lines to run before create_model_and_transforms (may be empty)


def open_clip_model_ref(config_model_name: str) -> OpenCLIPModelRef:
    """The open_clip name for a run's ``model.name`` (built-in, shipped clipdro config or JSON file)."""
    path = Path(config_model_name)
    if path.suffix == ".json":
        # open_clip names a config file's architecture by the file stem.
        return OpenCLIPModelRef(path.stem, [f"open_clip.add_model_config({str(path.resolve())!r})"])
    if config_model_name in shipped_model_names():
        return OpenCLIPModelRef(config_model_name, ["from clipdro.model_configs import register_model_configs",
                                                    "register_model_configs()"])
    return OpenCLIPModelRef(config_model_name, [])


def export_open_clip(run: TrainedRun, output: str | Path) -> Path:
    """Write the run's open_clip weights (a plain state_dict) to ``output``; returns the path."""
    output = Path(output)
    save_atomic({key: value.detach().cpu() for key, value in run.model.clip.state_dict().items()}, output)
    return output


def export_tempnets(run: TrainedRun, output: str | Path) -> Path:
    """Write the run's two TempNets with their constructor arguments (see the module docstring)."""
    if not run.model.has_tempnets:
        raise UsageError(f"{run.checkpoint}: the run used loss {run.loss_name!r}, which has no TempNets")
    payload = {
        "format": TEMPNETS_FORMAT,
        **{side: {"init_args": net.init_args(),
                  "state_dict": {key: value.detach().cpu() for key, value in net.state_dict().items()}}
           for side, net in (("image", run.model.image_tempnet), ("text", run.model.text_tempnet))},
        "source": {"checkpoint": str(run.checkpoint.resolve()), "step": run.step,
                   "model": run.config["model"]["name"]},
    }
    output = Path(output)
    save_atomic(payload, output)
    return output


def loading_code(ref: OpenCLIPModelRef, weights: Path, tempnets: Path | None = None) -> str:
    """Python lines that load the exported file(s), printed by the command for copy and paste."""
    lines = ["import open_clip", *ref.setup,
             f"model, _, preprocess = open_clip.create_model_and_transforms({ref.name!r}, "
             f"pretrained={str(weights.resolve())!r})",
             f"tokenizer = open_clip.get_tokenizer({ref.name!r})"]
    if tempnets is not None:
        lines += ["import torch",
                  "from clipdro.tempnet import CLIPTempNet",
                  f"tempnets = torch.load({str(tempnets.resolve())!r}, weights_only=True)",
                  "image_tempnet, text_tempnet = (CLIPTempNet(**tempnets[side]['init_args']).eval() "
                  "for side in ('image', 'text'))",
                  "image_tempnet.load_state_dict(tempnets['image']['state_dict'])",
                  "text_tempnet.load_state_dict(tempnets['text']['state_dict'])"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = UsageArgumentParser(prog="clipdro export",
                                 description="a training run -> an open_clip-loadable checkpoint")
    parser.add_argument("checkpoint",
                        help="a run folder (its newest checkpoint) or one checkpoint (step_N folder or file)")
    parser.add_argument("--output", required=True, help="open_clip weights file to write, e.g. model.pt")
    parser.add_argument("--tempnets", help="also write the two TempNets (tempnet runs) to this file")
    args = parser.parse_args(argv)
    run = load_trained_run(args.checkpoint, "cpu")
    ref = open_clip_model_ref(run.config["model"]["name"])
    # TempNets first: a run without them is refused before anything is written.
    tempnets = export_tempnets(run, args.tempnets) if args.tempnets else None
    weights = export_open_clip(run, args.output)
    print(f"wrote {weights}: open_clip {ref.name} weights from {run.checkpoint} "
          f"(step {run.step}, loss {run.loss_name})")
    if tempnets is not None:
        print(f"wrote {tempnets}: image and text TempNets")
    print("load with:\n" + "\n".join("    " + line for line in loading_code(ref, weights, tempnets).splitlines()))
    return 0
