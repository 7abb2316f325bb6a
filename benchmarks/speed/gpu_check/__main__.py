"""``python -m benchmarks.speed.gpu_check``: the GPU check (main.py), or one nccl worker rank (``--nccl-worker``)."""

import sys

from benchmarks.speed.gpu_check.main import main

sys.exit(main())
