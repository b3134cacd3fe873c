# Two set-up-and-go targets: `make demo` and `make test`. Both create .venv on first use.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
export TI_SKIP_VERSION_CHECK := on
export ENABLE_TAICHI_HEADER_PRINT := 0
export PYTHONUNBUFFERED := 1

.PHONY: setup demo test test-browser bench clean

setup: $(STAMP)

# open3d needs libusb-1.0 from Debian; torch is installed first and pinned so pip takes
# the CPU build that lies on this kind of machine's disk rather than a multi-GB CUDA build.
$(STAMP): pyproject.toml
	@if ! ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0'; then \
	  echo "installing Debian's libusb-1.0-0 (needed by open3d)"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get install -y -q libusb-1.0-0 >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null 2>&1 && $$SUDO apt-get install -y -q libusb-1.0-0 >/dev/null; }; \
	fi
	@[ -x $(VPY) ] || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
	$(VPY) -m pip install -q torch==2.13.0 2>&1 | grep -v '^WARNING: Location' || true
	$(VPY) -m pip install -q -e '.[test]' 2>&1 | grep -v '^WARNING: Location' || true
	$(VPY) -c "import torch, taichi, open3d, imageio, pytorch_msssim, click" 
	@touch $(STAMP)

# The main job on a small built-in scene: generate a torus video with the MPM simulator, fit it
# with the fast preset, evaluate it, then re-simulate the asset with zero gravity and a sticky ground.
DEMO := demo_out
demo: $(STAMP)
	$(VENV)/bin/sgaus generate-mpm --shape torus --views 6 --frames 30 --resolution 128 --static-views 24 --out $(DEMO)/data --overwrite
	$(VENV)/bin/sgaus fit $(DEMO)/data --out $(DEMO)/run --preset fast --resume
	$(VENV)/bin/sgaus eval $(DEMO)/run
	$(VENV)/bin/sgaus simulate $(DEMO)/run --gravity 0 --velocity 0.3,0,0 --out $(DEMO)/run/sims/zero_gravity --overwrite
	$(VENV)/bin/sgaus simulate $(DEMO)/run --friction sticky --orbit --out $(DEMO)/run/sims/sticky_ground --overwrite
	@echo
	@echo "demo finished. Look at:"
	@echo "  $(DEMO)/run/report.html                  everything below on one page"
	@echo "  $(DEMO)/data/images/                     the generated multi-view video (ground truth)"
	@echo "  $(DEMO)/run/loss.png                     loss curves of the fit"
	@echo "  $(DEMO)/run/eval/metrics.md              metrics table (also metrics.json)"
	@echo "  $(DEMO)/run/eval/*.mp4                   ground truth | prediction, side by side"
	@echo "  $(DEMO)/run/sims/zero_gravity/video.mp4  the asset with gravity switched off"
	@echo "  $(DEMO)/run/sims/sticky_ground/video.mp4 the asset on a sticky ground, orbiting camera"

# pytest exits 5 when it collected no test: that must fail, not pass silently.
test: $(STAMP)
	@$(VPY) -m pytest -q tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

test-browser: $(STAMP)
	@command -v chromium >/dev/null || { SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q chromium >/dev/null; }
	@command -v chromium >/dev/null || { echo "make test-browser: chromium is not installed" >&2; exit 1; }
	$(VPY) -m pip install -q -e '.[test,viewer]' 2>&1 | grep -v '^WARNING: Location' || true
	@$(VPY) -c "import viser" || { echo "make test-browser: viser did not install" >&2; exit 1; }
	@$(VPY) -m pytest -q -rs tests -k "viewer or report_browser"; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-browser: pytest collected no tests" >&2; exit 1; fi; exit $$rc

bench: $(STAMP)
	$(VPY) benchmarks/bench_sim.py
	$(VPY) benchmarks/bench_render.py
	$(VPY) benchmarks/bench_mpm.py
	$(VPY) benchmarks/bench_fit.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache
