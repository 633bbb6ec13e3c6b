# The two set-up commands of the README:  `make profile` (main job)  and  `make test`.
PYTHON ?= python3

# torch is installed first and pinned only when absent: 2.13.0 is a CPU build on our
# machines (an unpinned install would pull several GB of CUDA packages); an existing
# torch is kept.
install:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q "torch==2.13.0"
	$(PYTHON) -m pip install -q -e ".[test]"

test: install
	$(PYTHON) -m pytest

profile: install
	$(PYTHON) -m profiling sweep --preset default --out reports/default --fresh

.PHONY: install test profile
