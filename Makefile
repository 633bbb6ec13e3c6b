# The set-up commands of the README:  `make profile` (main job),  `make test`,  `make reports`.
PYTHON ?= python3
RUN := runs/default-$(shell date -u +%Y%m%d-%H%M%S)

# torch is installed first and pinned only when absent: 2.13.0 is a CPU build on our
# machines (an unpinned install would pull several GB of CUDA packages); an existing
# torch is kept.  The test extra brings Ray and transformers, whose tests skip without them.
# Installing is skipped while pyproject.toml is unchanged for this Python (a stamp per interpreter
# prefix under .make/), so `make profile` spends its time on the sweep; a fresh clone installs.
STAMP := .make/installed-$(shell $(PYTHON) -c "import hashlib, sys; print(hashlib.sha1(sys.prefix.encode()).hexdigest()[:12])")

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q "torch==2.13.0"
	$(PYTHON) -m pip install -q -e ".[test]"
	@mkdir -p .make && touch $@

test: install
	$(PYTHON) -m pytest

# The main job: the default sweep into a fresh, git-ignored run folder (runs/latest points at it).
profile: install
	$(PYTHON) -m profiling sweep --preset default --out $(RUN)
	ln -sfn $(notdir $(RUN)) runs/latest
	@echo "report: $(RUN)/report.md  (also runs/latest/report.md)"

# Regenerate the committed reports deliberately (reports/default; the others: see README).
reports: install
	$(PYTHON) -m profiling sweep --preset default --out reports/default --fresh

.PHONY: install test profile reports
