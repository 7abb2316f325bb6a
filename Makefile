# Each target creates .venv on first use, so both Quick start commands work on a fresh machine.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: test test-slow lint demo demo-pretrained clean-venv gpu-wheels gpu-check gpu-rehearsal

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[cpu,dev,llm,pretrained]'
	touch $(STAMP)

# The default suite (tests not marked slow): at most 180 s of pytest time on 2 CPU cores.
test: $(STAMP)
	$(VENV)/bin/ruff check .
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest -q --durations=15

# The tests marked slow (multi-process fault injection, whole demos, benchmark sweeps): CI runs them too.
test-slow: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest -q -m slow --durations=15

# The main job: train on the embedded data (CPU), print retrieval / zero-shot results, write the tau report.
demo: $(STAMP)
	rm -rf runs/demo
	HF_HUB_OFFLINE=1 $(VENV)/bin/clipdro train --config configs/demo.yaml
	HF_HUB_OFFLINE=1 $(VENV)/bin/clipdro report runs/demo --data data/openclipart/test
	@echo "report: runs/demo/report/report.md"

# The same, from pretrained towers (ImageNet EfficientNet-Lite0 + MiniLM, from pip packages): about 10 min on 2 cores.
demo-pretrained: $(STAMP)
	rm -rf runs/pretrained_demo
	HF_HUB_OFFLINE=1 $(VENV)/bin/clipdro train --config configs/pretrained_demo.yaml
	HF_HUB_OFFLINE=1 $(VENV)/bin/clipdro report runs/pretrained_demo --data data/openclipart/test
	@echo "report: runs/pretrained_demo/report/report.md"

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean-venv:
	rm -rf $(VENV)

# ---- GPU check (docs/performance.md#gpu) ----------------------------------------------------------------------
# The GPU machine (Python 3.12, its own torch, no network) lacks these; gpu-wheels fetches them here as Python 3.12
# manylinux x86-64 wheels (3.7 MiB) into the ignored wheels/py312, which travels with the tree (carry: wheels).
# webdataset 0.2.86 goes apart (open_clip_train/): only open_clip's own trainer uses it. No faiss: its smallest
# wheel (faiss-cpu, 66 MB) is over the 64 MiB budget, so the check records GPU FAISS as not measured.
GPU_WHEELS := wheels/py312
GPU_WHEEL_PINS := open_clip_torch==3.3.0 webdataset==1.0.2 ftfy==6.3.1 wcwidth==0.9.4 braceexpand==0.1.7 \
	regex==2026.11.19 safetensors==0.8.0
PIP_DOWNLOAD_PY312 := download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
	--implementation cp
WHEEL_PIP := $(if $(wildcard $(VENV)/bin/pip),$(VENV)/bin/pip,python3 -m pip)

gpu-wheels:
	rm -rf $(GPU_WHEELS)
	$(WHEEL_PIP) $(PIP_DOWNLOAD_PY312) -d $(GPU_WHEELS) $(GPU_WHEEL_PINS)
	$(WHEEL_PIP) $(PIP_DOWNLOAD_PY312) -d $(GPU_WHEELS)/open_clip_train webdataset==0.2.86
	du -ab $(GPU_WHEELS) | sort -n

# On the GPU machine: installs the wheels the machine lacks (pip install --no-deps, over its torch) into a private
# folder on PYTHONPATH, runs clipdro from this tree, then the four parts; exits 2 at once without CUDA.
# GPU_CHECK_OUT (default runs/gpu-check-TIMESTAMP) gets gpu_check.json and gpu_check.md.
GPU_PYTHON ?= python3
gpu-check:
	HF_HUB_OFFLINE=1 $(GPU_PYTHON) -m benchmarks.speed.gpu_check --wheels $(GPU_WHEELS) \
		$(if $(GPU_CHECK_OUT),--out $(GPU_CHECK_OUT)) $(GPU_CHECK_ARGS)

# The same check rehearsed on the CPU, the way the GPU machine runs it: a Python 3.12 venv holding only what that
# machine has (torch 2.11 and torchvision 0.26 from PyPI, a 5 GB CUDA build, timm, transformers, pandas, matplotlib,
# tensorboard), the brought wheels installed by the check itself, gloo for NCCL, CPU autocast for bf16, small
# throughput runs (about 2 min). PYTHON312: a Python 3.12 interpreter (here: pyenv's 3.12.1).
PYTHON312 ?= python3.12
REHEARSAL_VENV := .venv-gpu-rehearsal
$(REHEARSAL_VENV)/bin/python:
	$(PYTHON312) -m venv $(REHEARSAL_VENV)
	$(REHEARSAL_VENV)/bin/pip install --quiet torch==2.11.0 torchvision==0.26.0 timm transformers pandas matplotlib \
		tensorboard

gpu-rehearsal: $(REHEARSAL_VENV)/bin/python
	rm -rf runs/gpu-rehearsal runs/gpu-rehearsal-work
	HF_HUB_OFFLINE=1 $(REHEARSAL_VENV)/bin/python -m benchmarks.speed.gpu_check --cpu-rehearsal --wheels $(GPU_WHEELS) \
		--out runs/gpu-rehearsal --work-dir runs/gpu-rehearsal-work
