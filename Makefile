# Each target creates .venv on first use, so both Quick start commands work on a fresh machine.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: test lint demo demo-pretrained clean-venv

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev,llm,pretrained]'
	touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest -q

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
