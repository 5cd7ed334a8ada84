# Two commands do all set-up on a fresh clone (see README):
#   make quickstart   install, then train + evaluate the quick-test diffusion model offline on CPU
#   make test         install, then run the whole test suite
PYTHON ?= python
# torch is pinned for the install so pip never pulls an unpinned multi-GB CUDA build on a fresh machine;
# set TORCH_SPEC="torch" (or your CUDA build) on a GPU box.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install quickstart test
install:
	$(PYTHON) -m pip install -q "$(TORCH_SPEC)" -e ".[test]"

quickstart: install
	$(PYTHON) scripts/train.py --config configs/quick_test.yaml

test: install
	$(PYTHON) -m pytest -q
