"""The learned-temperature report of a trained run: computations, plots and markdown.

Where the per-sample temperatures come from:

- ``tempnet`` runs: the run's two TempNets, in eval mode (dropout off), applied to the
  L2-normalised embeddings the checkpoint's model gives, images through its *eval* transform
  (no training augmentation). They exist for any input, so training samples (read from the
  run's shards) and evaluation-set images and captions both get them.
- ``isogclr`` runs: the per-sample tau tables stored in the checkpoint, rows of samples seen in
  training only. They exist for training samples only: an evaluation set has no isogclr tau.

Other losses (``clip``, ``sogclr``) have one global temperature and nothing per sample to report.

The paper's claim to check: TempNet cools or heats a sample by its semantics, so common content
gets a different tau than rare content. The commonness of a caption c, with W(c) its distinct
words (lower-cased runs of letters and digits), is

    commonness(c) = mean over w in W(c) of ln(df(w) / N)

where df(w) is the number of the N analysed training captions that contain w (document
frequency). It is 0 when every word is in every caption and more negative the rarer the
words; a caption without words has none (NaN) and is left out. Stop words are kept: they are
frequent in every caption alike and shift all values similarly. The relation to tau is shown
as mean tau per equal-count bin of commonness and summarised by Spearman's rank correlation.
"""

from __future__ import annotations

import math
import re
import textwrap
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

# Figure without pyplot: no global backend or figure registry, files only (works without a display).
from matplotlib.figure import Figure

from clipdro.data.evalset import EvalSet
from clipdro.data.pipeline import RawSample
from clipdro.errors import UsageError
from clipdro.eval.embed import embed_images, embed_texts
from clipdro.stats import distribution_summary, quantile_bins, spearman
from clipdro.trained_run import TrainedRun

PER_SAMPLE_LOSSES = ("tempnet", "isogclr")
_WORD = re.compile(r"[^\W_]+")  # runs of letters and digits, any script

# ---------------------------------------------------------------------------------------
# Statistics (pure functions on arrays and strings)


def caption_words(caption: str) -> set[str]:
    """The distinct lower-cased words of a caption: ``"A cat, a CAT!"`` -> ``{"a", "cat"}``."""
    return set(_WORD.findall(caption.lower()))


def commonness(captions: Sequence[str]) -> np.ndarray:
    """Per caption, the mean over its distinct words of ln(document frequency / number of captions).

    Document frequencies are counted over ``captions`` themselves; NaN for a caption without words.
    """
    words = [caption_words(caption) for caption in captions]
    document_frequency = Counter(word for caption_words_ in words for word in caption_words_)
    total = len(captions)
    return np.array([np.mean([math.log(document_frequency[word] / total) for word in caption_words_])
                     if caption_words_ else math.nan for caption_words_ in words], dtype=np.float64)





def extremes(frame: pd.DataFrame, column: str, count: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``count`` rows with the lowest and the highest ``column`` (NaN rows left out; stable order)."""
    ranked = frame[np.isfinite(frame[column])].sort_values(column, kind="stable")
    return ranked.head(count), ranked.tail(count).iloc[::-1]


# ---------------------------------------------------------------------------------------
# Temperatures of a trained run


def tempnet_temperatures(run: TrainedRun, images: Sequence[Path | bytes], captions: Sequence[str],
                         batch_size: int, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """(image taus, caption taus) from the run's TempNets on its model's normalised embeddings."""
    model = run.model  # in eval mode (load_trained_run): TempNet dropout is off
    image_tau = text_tau = np.zeros(0)
    with torch.no_grad():
        if images:
            features = embed_images(model.clip, run.eval_transform, images, batch_size, device)
            image_tau = model.image_tempnet(features.to(device)).double().cpu().numpy()
        if captions:
            features = embed_texts(model.clip, run.tokenizer, captions, batch_size, device)
            text_tau = model.text_tempnet(features.to(device)).double().cpu().numpy()
    return image_tau, text_tau


def table_temperatures(run: TrainedRun, side: str) -> tuple[np.ndarray, np.ndarray]:
    """An isogclr run's ``side`` ("image" or "text") tau table and its seen mask, indexed by sample id."""
    tau = run.loss_state[f"{side}_tau_table.tau"].double().numpy()
    seen = run.loss_state[f"{side}_tau_table.seen"].numpy().astype(bool)
    return tau, seen


# ---------------------------------------------------------------------------------------
# The report


def require_per_sample_temperatures(run: TrainedRun) -> None:
    """Refuse runs whose loss has one global temperature (nothing per sample to report)."""
    if run.loss_name not in PER_SAMPLE_LOSSES:
        raise UsageError(f"{run.checkpoint}: loss {run.loss_name!r} has one global temperature; the report "
                         f"needs per-sample temperatures ({' or '.join(PER_SAMPLE_LOSSES)} runs)")


@dataclass
class Distribution:
    on: str  # what the values were computed on
    modality: str  # "image" or "text"
    values: np.ndarray


@dataclass
class FrequencyAnalysis:
    on: str
    num_captions: int  # captions with at least one word (the rest have no commonness)
    bins: pd.DataFrame  # quantile_bins of commonness with mean_image_tau, mean_text_tau
    spearman_image: float
    spearman_text: float


@dataclass
class ExtremeCaptions:
    on: str
    lowest: pd.DataFrame  # columns caption, text_tau
    highest: pd.DataFrame


@dataclass
class TemperatureReport:
    run: TrainedRun
    method: str  # how the taus were obtained
    distributions: list[Distribution] = field(default_factory=list)
    training: pd.DataFrame | None = None  # sample_id, caption, image_tau, text_tau, commonness
    frequency: FrequencyAnalysis | None = None
    extreme_captions: list[ExtremeCaptions] = field(default_factory=list)
    class_means: pd.DataFrame | None = None  # classname, images, mean_image_tau[, mean_caption_tau]
    class_means_on: str = ""
    notes: list[str] = field(default_factory=list)


def build_report(run: TrainedRun, training_samples: Sequence[RawSample] | None, training_on: str,
                 evalset: EvalSet | None = None, *, batch_size: int = 64, device: torch.device | None = None,
                 num_bins: int = 10, num_extremes: int = 10) -> TemperatureReport:
    """Every number of the report. ``training_samples`` (with ``training_on`` saying which they are)
    and ``evalset`` are optional inputs; sections without their input are left out with a note."""
    require_per_sample_temperatures(run)
    device = device or torch.device("cpu")
    uses_tempnets = run.loss_name == "tempnet"
    report = TemperatureReport(run=run, method=(
        "TempNets (eval mode, dropout off) applied to the L2-normalised embeddings of the checkpoint's model; "
        "images through its eval transform (no training augmentation)" if uses_tempnets else
        "the checkpoint's per-sample tau tables (iSogCLR); only rows of samples seen in training"))

    if not uses_tempnets:
        for side in ("image", "text"):
            tau, seen = table_temperatures(run, side)
            report.distributions.append(Distribution(
                f"all {int(seen.sum()):,} training samples with a {side} tau (seen in training)", side, tau[seen]))

    if training_samples:
        report.training = _training_frame(run, training_samples, uses_tempnets, batch_size, device)
        if uses_tempnets:
            for side in ("image", "text"):
                report.distributions.append(Distribution(training_on, side, report.training[f"{side}_tau"].to_numpy()))
        report.frequency = _frequency_analysis(report.training, training_on, num_bins)
        lowest, highest = extremes(report.training, "text_tau", num_extremes)
        report.extreme_captions.append(ExtremeCaptions(training_on, lowest, highest))
    else:
        report.notes.append("No training samples were read: no temperature-vs-frequency analysis and no "
                            "training captions.")

    if evalset is not None:
        if uses_tempnets:
            _add_evalset(report, evalset, batch_size, device, num_extremes)
        else:
            report.notes.append(f"Evaluation set {evalset.name!r} not used: iSogCLR learns one tau per training "
                                "sample, which does not extend to unseen samples.")
    return report


def _training_frame(run: TrainedRun, samples: Sequence[RawSample], uses_tempnets: bool, batch_size: int,
                    device: torch.device) -> pd.DataFrame:
    ids = np.array([sample.sample_id for sample in samples], dtype=np.int64)
    captions = [sample.caption for sample in samples]
    if uses_tempnets:
        image_tau, text_tau = tempnet_temperatures(run, [sample.image for sample in samples], captions,
                                                   batch_size, device)
    else:
        (image_table, image_seen), (text_table, text_seen) = (table_temperatures(run, s) for s in ("image", "text"))
        if ids.max() >= len(image_table):
            raise UsageError(f"training sample id {int(ids.max())} is outside the run's tau tables "
                             f"({len(image_table)} rows): these shards are not the run's training data")
        image_tau = np.where(image_seen[ids], image_table[ids], np.nan)
        text_tau = np.where(text_seen[ids], text_table[ids], np.nan)
    return pd.DataFrame({"sample_id": ids, "caption": captions, "image_tau": image_tau, "text_tau": text_tau,
                         "commonness": commonness(captions)})


def _frequency_analysis(training: pd.DataFrame, training_on: str, num_bins: int) -> FrequencyAnalysis:
    bins = quantile_bins(training["commonness"], {"image_tau": training["image_tau"],
                                                  "text_tau": training["text_tau"]}, num_bins)
    return FrequencyAnalysis(on=training_on, num_captions=int(np.isfinite(training["commonness"]).sum()),
                             bins=bins,
                             spearman_image=spearman(training["commonness"], training["image_tau"]),
                             spearman_text=spearman(training["commonness"], training["text_tau"]))


def _add_evalset(report: TemperatureReport, evalset: EvalSet, batch_size: int, device: torch.device,
                 num_extremes: int) -> None:
    captions, caption_image = evalset.flat_captions() if evalset.has_captions else ([], [])
    paths = [evalset.image_path(index) for index in range(len(evalset.images))]
    image_tau, caption_tau = tempnet_temperatures(report.run, paths, captions, batch_size, device)
    on = f"evaluation set {evalset.name!r} ({len(paths):,} images, {len(captions):,} captions)"
    report.distributions.append(Distribution(on, "image", image_tau))
    if captions:
        report.distributions.append(Distribution(on, "text", caption_tau))
        frame = pd.DataFrame({"caption": captions, "text_tau": caption_tau})
        lowest, highest = extremes(frame, "text_tau", num_extremes)
        report.extreme_captions.append(ExtremeCaptions(on, lowest, highest))
    if evalset.has_labels:
        labels = np.asarray(evalset.labels)
        per_class = pd.DataFrame({"classname": [evalset.classnames[label] for label in labels], "image_tau": image_tau})
        grouped = per_class.groupby("classname", sort=False)
        class_means = pd.DataFrame({"images": grouped.size(), "mean_image_tau": grouped["image_tau"].mean()})
        if captions:
            caption_classes = [evalset.classnames[labels[image]] for image in caption_image]
            class_means["mean_caption_tau"] = pd.Series(caption_tau).groupby(caption_classes).mean()
        report.class_means = class_means.reset_index().sort_values("mean_image_tau", kind="stable")
        report.class_means_on = on + ", grouped by label"


# ---------------------------------------------------------------------------------------
# Output: PNG plots, CSV tables and report.md

HISTOGRAMS = "tau_histograms.png"
FREQUENCY_PLOT = "tau_vs_commonness.png"
CLASS_PLOT = "tau_per_class.png"
TRAINING_CSV = "training_taus.csv"
FREQUENCY_CSV = "tau_vs_commonness.csv"
CLASS_CSV = "tau_per_class.csv"
MAX_CLASSES_SHOWN = 40  # longer class lists: the lowest and highest 20 in plot and markdown, all in the CSV


def write_report(report: TemperatureReport, output_dir: str | Path) -> Path:
    """Write report.md with its plots and CSV tables into ``output_dir``; returns the markdown path."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tau_range = (report.run.config["temperature"]["min"], report.run.config["temperature"]["max"])
    _plot_histograms(report.distributions, tau_range, output_dir / HISTOGRAMS)
    if report.training is not None:
        report.training.to_csv(output_dir / TRAINING_CSV, index=False)
    if report.frequency is not None and not report.frequency.bins.empty:
        report.frequency.bins.to_csv(output_dir / FREQUENCY_CSV, index=False)
        _plot_frequency(report.frequency, output_dir / FREQUENCY_PLOT)
    if report.class_means is not None:
        report.class_means.to_csv(output_dir / CLASS_CSV, index=False)
        _plot_class_means(_shown_classes(report.class_means), report.class_means_on, output_dir / CLASS_PLOT)
    path = output_dir / "report.md"
    path.write_text(render_markdown(report), encoding="utf-8")
    return path


def _plot_histograms(distributions: list[Distribution], tau_range: tuple[float, float], path: Path) -> None:
    figure = Figure(figsize=(12, 4.5))
    axes = figure.subplots(1, 2, sharex=True)
    bins = np.linspace(*tau_range, 41)
    for axis, modality in zip(axes, ("image", "text"), strict=True):
        for distribution in (d for d in distributions if d.modality == modality and d.values.size):
            # density: sets of different sizes share one axis
            axis.hist(distribution.values, bins=bins, density=True, alpha=0.5, label=_wrap(distribution.on))
        axis.set(title=f"{modality} tau", xlabel="tau", ylabel="density")
        if axis.has_data():
            axis.legend(fontsize="x-small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def _plot_frequency(frequency: FrequencyAnalysis, path: Path) -> None:
    figure = Figure(figsize=(7, 4.5))
    axis = figure.subplots()
    for modality, rho in (("image", frequency.spearman_image), ("text", frequency.spearman_text)):
        axis.plot(frequency.bins["x_mean"], frequency.bins[f"mean_{modality}_tau"], marker="o",
                  label=f"{modality} tau (Spearman {_number(rho, 3)})")
    axis.set(xlabel="caption commonness: mean ln(document frequency / N) of its words",
             ylabel="mean tau in the bin", title=_wrap(f"tau by commonness bin; {frequency.on}", 70))
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def _plot_class_means(class_means: pd.DataFrame, on: str, path: Path) -> None:
    figure = Figure(figsize=(7, 0.3 * len(class_means) + 1.5))
    axis = figure.subplots()
    axis.barh(class_means["classname"], class_means["mean_image_tau"])
    axis.invert_yaxis()  # lowest tau on top, as in the table
    axis.set(xlabel="mean image tau", title=_wrap(on, 70))
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def _shown_classes(class_means: pd.DataFrame) -> pd.DataFrame:
    if len(class_means) <= MAX_CLASSES_SHOWN:
        return class_means
    half = MAX_CLASSES_SHOWN // 2
    return pd.concat([class_means.head(half), class_means.tail(half)])


def render_markdown(report: TemperatureReport) -> str:
    run, config = report.run, report.run.config
    lines = ["# Learned temperatures", "",
             "| | |", "|---|---|",
             f"| checkpoint | `{run.checkpoint.resolve()}` |",
             f"| step | {run.step:,} |",
             f"| loss | {run.loss_name} (rho = {config['loss']['rho']}) |",
             f"| model | {config['model']['name']} |",
             f"| tau range | [{config['temperature']['min']}, {config['temperature']['max']}] |",
             f"| taus from | {report.method} |", ""]
    lines += [f"Note: {note}" for note in report.notes] + ([""] if report.notes else [])

    lines += ["## Temperature distributions", "", f"![tau histograms]({HISTOGRAMS})", "",
              "| computed on | modality | count | mean | std | min | 5% | median | 95% | max |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for distribution in report.distributions:
        summary = distribution_summary(distribution.values)
        cells = [_number(summary.get(key)) for key in ("mean", "std", "min", "p5", "median", "p95", "max")]
        lines.append(f"| {_cell(distribution.on)} | {distribution.modality} | {summary['count']:,} | "
                     + " | ".join(cells) + " |")
    lines.append("")

    lines += ["## Temperature vs caption commonness", ""]
    frequency = report.frequency
    if frequency is None or frequency.bins.empty:
        lines += ["Not computed: no training captions with words were read.", ""]
    else:
        lines += [f"Computed on {frequency.on}; {frequency.num_captions:,} of them have at least one word. "
                  "Commonness of a caption = mean over its distinct words of ln(df / N), df = number of these "
                  "N captions containing the word (0: every word in every caption; lower: rarer words). "
                  "Equal-count bins of commonness; mean tau per bin (image tau = tau of the caption's image).",
                  "",
                  f"Spearman correlation with commonness: image tau {_number(frequency.spearman_image, 3)}, "
                  f"text tau {_number(frequency.spearman_text, 3)} (positive: common content gets a higher tau).",
                  "", f"![tau vs commonness]({FREQUENCY_PLOT})", "",
                  "| bin | commonness range | captions | mean image tau | mean text tau |", "|---|---|---|---|---|"]
        for index, row in frequency.bins.iterrows():
            lines.append(f"| {index + 1} | {row['x_min']:.3f} to {row['x_max']:.3f} | {int(row['count']):,} | "
                         f"{_number(row['mean_image_tau'])} | {_number(row['mean_text_tau'])} |")
        lines += ["", f"All per-sample values: `{TRAINING_CSV}`.", ""]

    lines += ["## Captions with the lowest and highest tau", ""]
    if not report.extreme_captions:
        lines += ["No captions were analysed.", ""]
    for extreme in report.extreme_captions:
        for title, frame in (("lowest", extreme.lowest), ("highest", extreme.highest)):
            lines += [f"### {title.capitalize()} text tau: {extreme.on}", "", "| text tau | caption |", "|---|---|"]
            lines += [f"| {_number(row.text_tau)} | {_cell(row.caption)} |" for row in frame.itertuples()]
            lines.append("")

    if report.class_means is not None:
        shown = _shown_classes(report.class_means)
        scope = "" if len(shown) == len(report.class_means) else (
            f" (the {MAX_CLASSES_SHOWN // 2} lowest and highest of {len(report.class_means)} classes; "
            f"all in `{CLASS_CSV}`)")
        caption_column = "mean_caption_tau" in shown
        lines += ["## Mean temperature per class", "", f"Computed on {report.class_means_on}{scope}; "
                  "sorted by mean image tau.", "", f"![tau per class]({CLASS_PLOT})", "",
                  "| class | images | mean image tau |" + (" mean caption tau |" if caption_column else ""),
                  "|---|---|---|" + ("---|" if caption_column else "")]
        for row in shown.itertuples():
            lines.append(f"| {_cell(row.classname)} | {row.images:,} | {_number(row.mean_image_tau)} |"
                         + (f" {_number(row.mean_caption_tau)} |" if caption_column else ""))
        lines.append("")
    return "\n".join(lines)


def _number(value: float | None, digits: int = 6) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}g}"


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _wrap(text: str, width: int = 60) -> str:
    return "\n".join(textwrap.wrap(text, width))
