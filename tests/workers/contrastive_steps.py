"""Three steps of every contrastive loss on a global batch split across the ranks.

Run as ``torchrun --standalone --nproc_per_node=W tests/workers/contrastive_steps.py OUT``
(or in-process through :func:`run_steps` for the single-process reference). Each rank holds
``GLOBAL_BATCH / W`` rows; gradients are averaged over ranks as DDP would average them,
gathered in rank order, and rank 0 saves them with the loss state, each per-sample table put
together from the rows every rank owns.
"""


import torch
import torch.distributed as dist
import torch.nn.functional as F

from clipdro.distributed import (
    all_gather_no_grad,
    gather_objects,
    get_rank,
    get_world_size,
    is_distributed,
)
from clipdro.losses import build_contrastive_loss
from tests.workers import save_rank0_results

GLOBAL_BATCH = 8
NUM_SAMPLES = 16
# The last step repeats ids within a rank and across ranks (the duplicate rule of clipdro.state).
STEP_IDS = [list(range(0, 8)), list(range(4, 12)), [0, 2, 4, 6, 8, 10, 12, 14], [3, 1, 3, 7, 1, 9, 3, 12]]
LOSS_OPTIONS = {
    "tempnet": {"rho": 1.0, "table_dtype": torch.float64},
    "sogclr": {"tau": 0.03, "table_dtype": torch.float64},
    "isogclr": {"rho": 1.0, "table_dtype": torch.float64},
    "clip": {},
}


def global_inputs(step: int):
    generator = torch.Generator().manual_seed(100 + step)
    image = F.normalize(torch.randn(GLOBAL_BATCH, 6, generator=generator, dtype=torch.float64), dim=1)
    text = F.normalize(image + torch.randn(GLOBAL_BATCH, 6, generator=generator, dtype=torch.float64), dim=1)
    image_tau = 0.01 + 0.1 * torch.rand(GLOBAL_BATCH, generator=generator, dtype=torch.float64)
    text_tau = 0.01 + 0.1 * torch.rand(GLOBAL_BATCH, generator=generator, dtype=torch.float64)
    return image, text, image_tau, text_tau, torch.tensor(STEP_IDS[step])


def averaged_over_ranks(grad: torch.Tensor, is_shared_parameter: bool) -> torch.Tensor:
    # A replicated parameter's gradient is all-reduced and divided by W (DDP); a per-rank
    # input's gradient is divided by W only (DDP's averaging, applied through the chain rule).
    world_size = get_world_size()
    if is_shared_parameter and is_distributed():
        grad = grad.clone()
        dist.all_reduce(grad)
    return grad / world_size


def run_steps() -> dict:
    world_size, rank = get_world_size(), get_rank()
    rows = slice(rank * GLOBAL_BATCH // world_size, (rank + 1) * GLOBAL_BATCH // world_size)
    results = {}
    for name, options in LOSS_OPTIONS.items():
        loss_fn = build_contrastive_loss(name, NUM_SAMPLES, **options)
        steps = []
        for step in range(len(STEP_IDS)):
            image, text, image_tau, text_tau, sample_ids = global_inputs(step)
            if name == "clip":  # one global temperature: a replicated parameter
                image_tau = text_tau = torch.tensor(0.05, dtype=torch.float64)
                leaves = [image[rows].clone().requires_grad_(), text[rows].clone().requires_grad_(),
                          image_tau.clone().requires_grad_()]
                output = loss_fn(leaves[0], leaves[1], leaves[2], leaves[2], sample_ids[rows])
            else:
                leaves = [t[rows].clone().requires_grad_() for t in (image, text, image_tau, text_tau)]
                output = loss_fn(*leaves, sample_ids=sample_ids[rows])
            grads = torch.autograd.grad(output.loss, leaves, allow_unused=True)
            shared = [name == "clip" and index == 2 for index in range(len(leaves))]
            gathered_grads = []
            for leaf, grad, is_shared in zip(leaves, grads, shared, strict=True):
                grad = averaged_over_ranks(torch.zeros_like(leaf) if grad is None else grad, is_shared)
                gathered_grads.append(grad if is_shared else all_gather_no_grad(grad))
            steps.append({
                "loss": averaged_over_ranks(output.loss.detach(), True),
                "grads": gathered_grads,
                "image_tau": all_gather_no_grad(output.image_tau.contiguous()),
            })
        # The whole state: every rank's rows of each per-sample table, concatenated in rank order.
        state = {key: torch.cat(gather_objects(value)) for key, value in loss_fn.state_dict().items()}
        results[name] = {"steps": steps, "state": state}
    return results


if __name__ == "__main__":
    save_rank0_results(run_steps)
