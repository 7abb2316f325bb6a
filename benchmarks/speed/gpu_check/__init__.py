"""The GPU check: one command that measures and verifies, on a CUDA machine, what the CPU suite cannot.

    make gpu-check GPU_CHECK_OUT=runs/gpu-check                  # = the line below
    python -m benchmarks.speed.gpu_check --wheels wheels/py312 --out runs/gpu-check [--parts nccl precision]
    python -m benchmarks.speed.gpu_check --help

GPU time comes rarely and for minutes, so everything is prepared here and the whole check is bounded
by ``--time-budget`` (default 420 s, installs included). Order of events (main.py):

1. CUDA first: without a usable CUDA device the script prints one line on stderr and exits 2, before
   it installs or writes anything (the CPU suite tests this).
2. Installs (``--wheels DIR``, made by ``make gpu-wheels``): every wheel in DIR whose distribution this
   Python lacks is installed with ``pip install --no-deps --no-index --target SITE`` (or unpacked when
   pip is absent) into a private folder on PYTHONPATH, over the machine's own torch; distributions the
   machine has (its torch, timm, transformers and what they need) are never replaced. clipdro runs
   from this source tree (PYTHONPATH), so nothing is built offline.
3. The parts (``--parts``, default all), each a function returning a dict, run cheapest first (nccl,
   precision, faiss, throughput) so a part that overruns cannot cost the others; a part that would
   start with too little of the budget left is skipped with that reason. ``gpu_check.json`` and
   ``gpu_check.md`` in ``--out`` are rewritten after every part, so a killed run leaves what it had.

The package: startup.py (arguments, the CUDA refusal, wheels, the run context, the reports), one module
per part (throughput.py, nccl.py, faiss_part.py, precision.py) and main.py (the order above; ``python -m``
runs it through __main__.py). The parts:

* ``throughput``: benchmarks/speed/train_throughput.py's three trainers (``clipdro train`` with the
  tempnet loss and with the clip loss, open_clip's own trainer) at ViT-B-32, batch 256, amp_bf16 on the
  embedded shards: steady-state samples/s, data-wait share and peak allocated CUDA memory (clipdro logs
  it; for open_clip, whose log has none, the launcher prints torch.cuda.max_memory_allocated() at exit),
  ``--repeats`` round-robin passes (default 1, for the budget). open_clip's trainer needs webdataset
  0.2.86 (``KeyError: 'fname'`` on later ones): it runs through a small launcher script that puts that
  wheel, unpacked, first on its PYTHONPATH.
* ``nccl``: ``torchrun --nproc_per_node=<every GPU>`` of the nccl worker (``python -m
  benchmarks.speed.gpu_check --nccl-worker FILE``) with the NCCL backend: a small two-tower model with
  clipdro's two CLIPTempNets (dropout 0) under DistributedDataParallel, trained by clipdro's own step
  (clipdro.train.clip_step) with the tempnet (DRO) loss and its per-sample tables, SGD with momentum,
  ``--nccl-steps`` steps on 32 rows per rank of a seeded global batch (sample ids revisit the tables
  across steps). Afterwards every rank's parameters must equal rank 0's exactly, and rank 0's, with the DRO
  tables (s, b, seen) put together from the rows each rank owns, must match a single-process float64
  recomputation of the same steps on the whole global batch on the CPU (the loss math, the tables and the
  updates), within NCCL_TOLERANCES. With one
  GPU the world size is 1: the process group and DDP's collectives are NCCL, but clipdro's loss gathers
  nothing.
* ``faiss``: retrieval on ``--faiss-captions`` random captions (5 per image, 512-d) with FAISS's GPU
  index and its CPU index: both rank lists, the recalls (must be equal) and the search times. faiss is
  not among the wheels brought (faiss-cpu's wheel alone is 66 MB, faiss-gpu's needs 1.6 GB of CUDA 12
  libraries, the tree may carry 64 MiB), so on the lent machine this part records FAISS_NOT_BROUGHT.
* ``precision``: the same model, initial weights and 5 batches trained in fp32 (TF32 off) and in
  amp_bf16, for the tempnet and the clip loss, each batch through clipdro's own step
  (clipdro.train.clip_step): the per-step losses and mean temperatures, and their relative differences
  (the first step compares the forward passes alone; later ones the updates too), which must stay within
  ``--precision-rtol``.

Outputs (``--out``, default runs/gpu-check-TIMESTAMP): ``gpu_check.json`` (the command, machine, GPUs,
versions, what was installed, and one object per part with ``status`` passed / failed / measured /
skipped / error, ``summary``, ``seconds`` and its figures) and ``gpu_check.md`` (a table of the parts,
then each part's details). Training runs (several GB of checkpoints) go to ``--work-dir``, never to
``--out``. Exit status: 0 when no part failed or errored, 1 otherwise, 2 without CUDA.
"""
