"""Can a TempNet learn per-sample temperatures at all? A probe on frozen embeddings.

    python -m benchmarks.paper.tempnet_fit_probe runs/demo --rho 5.0
    python -m benchmarks.paper.tempnet_fit_probe runs/demo --rho 5.0 --lrs 1e-2 --dropouts 0.5 --steps 264

With the encoders frozen, the DRO objective separates over samples: sample i's best temperature is
tau*_i with KL(softmax(h_i / tau*_i) || uniform) = rho (method.md §1), clipped to the TempNet's
range. This script embeds the training split with a trained run's model (eval transform, cached
next to the run), then trains *fresh* image TempNets on those fixed embeddings with the exact
per-batch tau gradient (rho - KL on each batch of 256, no moving average, the text embeddings of
the batch as competitors) for each combination of TempNet learning rate, dropout and number of
Adam steps. On 8 fixed held-out batches it reports the learned tau's spread (p90 / p10), its
Spearman correlation with tau*, and the mean |log tau - log tau*|, next to the error of the best
single temperature (what a non-personalising TempNet can reach at most).

It isolates the TempNet's optimisation from the encoders': a setting that cannot fit tau* here
cannot personalise in joint training within the same number of steps either.

First it dissects the run's own image and text TempNets on the training embeddings (eval mode):
how much the transformed input x = sigmoid(Linear(e)) varies across samples, how many distinct
prototypes win the pooling softmax, and the spread of the resulting taus. Then it describes the
targets: which anchors the DRO rule warms and which it cools, and how the caption of each anchor's
hardest competitor relates to its own (a near-repeat, a sibling, or unrelated), with examples.
``--lrs`` without values stops there.
"""

from __future__ import annotations

import argparse
import collections
import io
import itertools
import re
import sys
from pathlib import Path

import torch
from PIL import Image

from clipdro.analysis import best_taus, competitor_scores, dissect_tempnet
from clipdro.data.pipeline import DataSource, read_samples
from clipdro.losses import kl_to_uniform
from clipdro.stats import spearman
from clipdro.tempnet import CLIPTempNet
from clipdro.trained_run import load_trained_run

REPO_ROOT = Path(__file__).resolve().parents[2]
BATCH = 256
# The columns of the dissection table: dissect_tempnet's keys, each with its format.
DISSECTION_FORMATS = {"mean x": ".3f", "std of x over samples": ".4f", "std of scores over prototypes": ".3f",
                      "std of scores over samples": ".4f", "distinct winning prototypes": ".0f",
                      "mean top pooling weight": ".2f", "pooling scale": ".4f", "tau mean": ".4f",
                      "tau p95/p5": ".4f"}


def training_embeddings(run_dir: Path, shards: str) -> tuple[torch.Tensor, torch.Tensor]:
    cache = run_dir / "probe_embeddings.pt"
    if cache.exists():
        return torch.load(cache)
    run = load_trained_run(run_dir)
    samples = list(read_samples([DataSource(shards=shards)]))
    image_parts, text_parts = [], []
    with torch.no_grad():
        for start in range(0, len(samples), 512):
            chunk = samples[start:start + 512]
            images = torch.stack([run.eval_transform(Image.open(io.BytesIO(s.image)).convert("RGB")) for s in chunk])
            output = run.model(images, run.tokenizer([sample.caption for sample in chunk]))
            image_parts.append(output.image_features)
            text_parts.append(output.text_features)
    embeddings = torch.cat(image_parts), torch.cat(text_parts)
    torch.save(embeddings, cache)
    return embeddings


def dissection_row(net: CLIPTempNet, embeddings: torch.Tensor, name: str) -> str:
    """One row of the dissection table: how sample-dependent each stage of a trained TempNet is
    (:func:`clipdro.analysis.dissect_tempnet`, eval mode: dropout off)."""
    statistics = dissect_tempnet(net, embeddings)
    return f"| {name} | " + " | ".join(f"{statistics[key]:{spec}}" for key, spec in DISSECTION_FORMATS.items()) + " |"


def caption_overlap(first: str, second: str) -> float:
    """Jaccard overlap of two captions' lower-cased word sets: 1 for the same words, 0 for none shared."""
    first_words, second_words = (set(re.findall(r"[a-z0-9]+", text.lower())) for text in (first, second))
    union = first_words | second_words
    return len(first_words & second_words) / len(union) if union else 1.0


def hardest_competitor_overlaps(scores: torch.Tensor, captions: list[str]) -> torch.Tensor:
    """For each anchor (row of the batch's [B, B] scores), the caption overlap between its own
    caption and that of its highest-scoring competitor: near 1 when the hardest negative is a
    near-duplicate caption (a false negative), near the batch's typical overlap when it is not."""
    scores = scores.clone().fill_diagonal_(float("-inf"))
    hardest = scores.argmax(dim=1).tolist()
    return torch.tensor([caption_overlap(captions[i], captions[j]) for i, j in enumerate(hardest)])


def describe_targets(targets: torch.Tensor, gaps: torch.Tensor, overlaps: torch.Tensor,
                     repeated: torch.Tensor) -> None:
    """Which image anchors the DRO rule warms and which it cools: thirds of tau*, with how often the
    anchor's own caption beats all B - 1 competitors in its batch, how far the hardest one is,
    whether that hardest competitor's caption nearly or exactly repeats the anchor's own (the same
    words: a false negative), and how often the anchor's caption occurs more than once in the
    training set."""
    print("| third of tau* | mean tau* | positive ranked first in its batch | mean hardest gap max_j h_ij "
          "| hardest competitor's caption: mean word overlap | share with overlap >= 0.5 | share with the same words "
          "| anchor's caption repeated in the training set |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    low, high = targets.quantile(torch.tensor([1 / 3, 2 / 3]))
    hardest = gaps.max(dim=1).values
    for name, rows in (("coldest", targets <= low), ("middle", (targets > low) & (targets <= high)),
                       ("warmest", targets > high)):
        print(f"| {name} | {targets[rows].mean():.4f} | {(hardest[rows] < 0).float().mean():.2f} | "
              f"{hardest[rows].mean():+.3f} | {overlaps[rows].mean():.3f} | "
              f"{(overlaps[rows] >= 0.5).float().mean():.2f} | {(overlaps[rows] == 1.0).float().mean():.2f} | "
              f"{repeated[rows].float().mean():.2f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a trained run folder: its model gives the frozen embeddings")
    parser.add_argument("--shards", default=str(REPO_ROOT / "data" / "openclipart" / "train"))
    parser.add_argument("--rho", type=float, default=5.0)
    parser.add_argument("--tau-range", type=float, nargs=2, default=[0.005, 0.05])
    parser.add_argument("--lrs", type=float, nargs="*", default=[1e-4, 1e-3, 1e-2])
    parser.add_argument("--dropouts", type=float, nargs="+", default=[0.5, 0.0])
    parser.add_argument("--steps", type=int, nargs="+", default=[264, 2000])
    args = parser.parse_args(argv)
    tau_min, tau_max = args.tau_range
    torch.set_num_threads(1)

    image_embeddings, text_embeddings = training_embeddings(args.run, args.shards)
    count, dim = image_embeddings.shape
    run = load_trained_run(args.run)
    if run.model.has_tempnets:
        print(f"The run's own TempNets on its {count} training embeddings (eval mode):")
        print("| TempNet | " + " | ".join(DISSECTION_FORMATS) + " |")
        print("|---|" + "---:|" * len(DISSECTION_FORMATS))
        print(dissection_row(run.model.image_tempnet, image_embeddings, "image"))
        print(dissection_row(run.model.text_tempnet, text_embeddings, "text"))
    generator = torch.Generator().manual_seed(1)
    held_out = torch.cat([torch.randperm(count, generator=generator)[:BATCH] for _ in range(8)])
    gaps = [competitor_scores(image_embeddings[rows], text_embeddings[rows]) for rows in held_out.view(8, BATCH)]
    targets = torch.cat([best_taus(h, args.rho, tau_min, tau_max) for h in gaps])
    captions = [sample.caption for sample in read_samples([DataSource(shards=args.shards)])]
    caption_counts = collections.Counter(captions)
    repeated = torch.tensor([caption_counts[captions[i]] > 1 for i in held_out.tolist()])
    held_out_batches = held_out.view(8, BATCH).tolist()
    batch_scores = [image_embeddings[rows] @ text_embeddings[rows].t() for rows in held_out_batches]
    overlaps = torch.cat([hardest_competitor_overlaps(scores, [captions[i] for i in rows])
                          for scores, rows in zip(batch_scores, held_out_batches, strict=True)])
    random_pairs = torch.randint(count, (len(held_out), 2), generator=generator).tolist()
    typical_overlap = sum(caption_overlap(captions[i], captions[j]) for i, j in random_pairs) / len(random_pairs)
    constant_error = (targets.log() - targets.log().median()).abs().mean()
    print(f"rho {args.rho}, tau range [{tau_min}, {tau_max}], {count} samples, dim {dim}")
    print(f"tau*: p10 {targets.quantile(0.1):.4f} median {targets.median():.4f} p90 {targets.quantile(0.9):.4f}; "
          f"best single tau: mean |log tau - log tau*| {constant_error:.3f}")
    describe_targets(targets, torch.cat(gaps), overlaps, repeated)
    print(f"(two random training captions: mean word overlap {typical_overlap:.3f})")
    print("The warmest and coldest anchors of the first batch, with their hardest competitor:")
    print("| tau* | anchor's caption | hardest competitor's caption |")
    print("|---:|---|---|")
    first_scores, first_rows = batch_scores[0], held_out_batches[0]
    hardest = first_scores.clone().fill_diagonal_(float("-inf")).argmax(dim=1).tolist()
    by_tau = targets[:BATCH].argsort(descending=True).tolist()
    for anchor in by_tau[:8] + by_tau[-4:]:
        print(f"| {targets[anchor]:.3f} | {captions[first_rows[anchor]][:60]} | "
              f"{captions[first_rows[hardest[anchor]]][:60]} |")
    if not args.lrs:
        return 0
    print("| TempNet lr | dropout | Adam steps | tau mean | tau p90/p10 | Spearman(tau, tau*) | mean abs log error |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for lr, dropout, steps in itertools.product(args.lrs, args.dropouts, args.steps):
        torch.manual_seed(0)
        net = CLIPTempNet(dim, 256, tau_min, tau_max, dropout)
        net.init_prototypes(text_embeddings[torch.randperm(count)[:256]])  # the other modality, as in training
        optimizer = torch.optim.Adam(net.parameters(), lr=lr)
        batches = torch.Generator().manual_seed(0)
        for _ in range(steps):
            rows = torch.randperm(count, generator=batches)[:BATCH]
            tau = net(image_embeddings[rows])
            with torch.no_grad():
                gaps = competitor_scores(image_embeddings[rows], text_embeddings[rows])
                coefficient = args.rho - kl_to_uniform(gaps / tau[:, None])
            (coefficient * tau).mean().backward()  # the TempNet gradient of method.md §2 step 6
            optimizer.step()
            optimizer.zero_grad()
        net.eval()
        with torch.no_grad():
            learned = net(image_embeddings[held_out])
        error = (learned.log() - targets.log()).abs().mean()
        print(f"| {lr:g} | {dropout} | {steps} | {learned.mean():.4f} | "
              f"{learned.quantile(0.9) / learned.quantile(0.1):.2f} | {spearman(learned, targets):.2f} | "
              f"{error:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
