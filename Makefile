# Quick start: `make demo` and `make test` do all set-up (a .venv with the package installed).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

REF_VENV ?= .venv-ref
REF_STAMP := $(REF_VENV)/.installed-stamp
BEAM_VENV ?= .venv-beam
BEAM_STAMP := $(BEAM_VENV)/.installed-stamp

.PHONY: install browser test test-slow test-ref test-beam demo demo-search-index demo-search demo-tour demo-clip demo-clip-train demo-finetune demo-dalle demo-dvae demo-dalle-train demo-generate demo-serve tflite clean

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" --durations=15 $(PYTEST_ARGS) tests

# Headless Chromium (Debian's chromium + chromium-driver) and selenium for the search page's
# browser test (tests/test_search_page.py, in test-slow); installs only what is missing.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
browser: $(STAMP)
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends chromium chromium-driver \
		  && $(SUDO) apt-get clean; }
	$(PY) -c "import selenium" 2>/dev/null || $(PY) -m pip install --quiet selenium

test-slow: $(STAMP) browser $(BEAM_STAMP)
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS) tests

# Apache Beam (the embedding job on RunInference) in its own venv: apache-beam 2.77 pins
# protobuf < 7, pillow < 13 and pyarrow < 26, which the main venv's TF / preprocessing pins
# exclude. tests/test_beam_venv.py (in test-slow) runs tests/test_beam.py with it.
# TensorFlow (2 GB) is not installed a second time: a .pth file puts the main venv's
# site-packages after the Beam venv's own, so Beam's protobuf / pillow / pyarrow come first and
# everything else (TensorFlow, keras, tensorflow-text) is the main venv's copy (pip sees it as
# installed and leaves it alone). CI once ran out of disk building a second full copy.
$(BEAM_STAMP): $(STAMP)
	rm -rf $(BEAM_VENV)
	$(PYTHON) -m venv $(BEAM_VENV)
	$(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))' > \
		"$$($(BEAM_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/main_venv.pth"
	$(BEAM_VENV)/bin/python -m pip install --quiet --no-cache-dir 'apache-beam==2.77.*' \
		'protobuf<7' 'pillow<13' 'pyarrow<26' pytest pytest-timeout
	TF_CPP_MIN_LOG_LEVEL=3 $(BEAM_VENV)/bin/python -c "import apache_beam, tensorflow, keras, tensorflow_text"
	touch $(BEAM_STAMP)

test-beam: $(BEAM_STAMP)
	PYTHONPATH=. $(BEAM_VENV)/bin/python -m pytest -q -m slow $(PYTEST_ARGS) tests/test_beam.py

# README's screenshot of the search page, written by the browser test.
search-page-screenshot: browser
	SEARCH_PAGE_SCREENSHOT=docs/search_page.png $(PY) -m pytest -q -m slow tests/test_search_page.py

# The torch reference venv (open_clip, transformers, keras-hub, dall_e, dalle-pytorch) for live
# parity tests, fixture scripts and benchmarks; ~7 GB. Every install is held to
# tests/reference/pins.txt (see ../shared/REFERENCE.md's recipe).
REF_PIP = $(REF_VENV)/bin/python -m pip install --quiet -c tests/reference/pins.txt
$(REF_STAMP): setup.py tests/reference/pins.txt
	test -x $(REF_VENV)/bin/python || $(PYTHON) -m venv $(REF_VENV)
	# pip < 24.1: pytorch-lightning 1.7.7 (dalle-pytorch's) has metadata newer pips refuse.
	$(REF_VENV)/bin/python -m pip install --quiet 'pip<24.1'
	$(REF_PIP) torch torchvision
	$(REF_PIP) -e '.[dev,hub]'
	$(REF_PIP) open-clip-torch dall-e==0.1 attrs transformers
	$(REF_PIP) --no-deps dalle-pytorch==1.6.6 taming-transformers-rom1504 pytorch-lightning==1.7.7 \
		torchmetrics==0.11.4
	$(REF_PIP) axial-positional-embedding rotary-embedding-torch einops ftfy regex tokenizers \
		omegaconf pyDeprecate 'setuptools>=70,<80'
	touch $(REF_STAMP)

# Tests that compare against the torch references live (the `torch` marker), full-size included.
test-ref: $(REF_STAMP)
	$(REF_VENV)/bin/python -m pytest -q -m torch $(PYTEST_ARGS) tests

# The demo, in three parts that also run alone (each trains what it needs if it is missing):
#   demo-clip   the CLIP inference tour (demo-tour), then a small CLIP trained on the built-in
#               shapes data (demo-clip-train; `make demo` runs only this half, to stay in 20 min)
#   demo-dalle  the shapes dVAE, then a small DALL-E on its tokens
#   demo-serve  exports the trained models, serves them over gRPC and queries them
# Outputs (TensorBoard logs, .keras models, exports) land in runs/demo/.
DEMO := runs/demo

demo: demo-clip-train demo-search-index demo-dalle demo-serve

demo-tour: $(STAMP)
	$(PY) -m keras_clip.demo

demo-clip: demo-tour demo-clip-train

demo-clip-train: $(STAMP)
	rm -rf $(DEMO)/clip  # a fresh run each time (the backup there would resume the last one)
	$(PY) -m keras_clip.train --preset ViT-S-Demo --data shapes --epochs 8 --steps-per-epoch 60 \
		--batch-size 128 --lr 1e-3 --warmup-steps 30 --eval-examples 500 \
		--logdir $(DEMO)/clip --output $(DEMO)/clip.keras --verbose 2

# Image search on the demo CLIP: the shapes val images as a folder, embedded (keras_clip.embed),
# a few caption queries and a contact sheet (runs/demo/search/contact_sheet.png). demo-search
# then exports the CLIP with that index (the `search` signatures) and serves the search page:
# open http://127.0.0.1:8501/ui/ (Ctrl-C stops it).
SEARCH := $(DEMO)/search
demo-search-index: $(STAMP)
	test -f $(DEMO)/clip.keras || $(MAKE) --no-print-directory demo-clip-train
	rm -rf $(SEARCH)
	$(PY) -m keras_clip.search_demo --model $(DEMO)/clip.keras --out $(SEARCH)

demo-search: $(STAMP)
	test -f $(SEARCH)/index/manifest.json || $(MAKE) --no-print-directory demo-search-index
	rm -rf $(SEARCH)/serving
	$(PY) -m export.saved_model $(DEMO)/clip.keras --base-path $(SEARCH)/serving/clip \
		--index $(SEARCH)/index
	$(PY) -m export.serving_config --out $(SEARCH)/serving --model clip
	$(PY) -m export.serve --model-config $(SEARCH)/serving/models.config --port 8500 \
		--rest-port 8501 --ui --index $(SEARCH)/index --fast-load

# Fine-tuning demo (~4 min once runs/demo/clip.keras exists; not part of `make demo`): LiT — the
# demo CLIP's image tower locked, its text tower trained — on the shapes "finetune" split, which
# has the 5 colour-shape pairs the demo CLIP never saw; then zero-shot on val and on the held-out
# pairs along the WiSE-FT sweep (alpha 0 = the demo CLIP, 1 = the fine-tuned one), with the
# confusion matrices before and after.
FT := $(DEMO)/finetune
FT_EVAL = --data shapes:$$split --num-examples 500 --task zeroshot_classification --no-progress
demo-finetune: $(STAMP)
	test -f $(DEMO)/clip.keras || $(MAKE) --no-print-directory demo-clip-train
	rm -rf $(FT)
	$(PY) -m keras_clip.train --init-from $(DEMO)/clip.keras --data shapes --split finetune \
		--lock-image --epochs 3 --steps-per-epoch 20 --batch-size 128 --lr 3e-4 --warmup-steps 5 \
		--eval-examples 500 --logdir $(FT)/train --output $(FT)/clip_lit.keras --verbose 2
	for split in val heldout; do \
		$(PY) -m keras_clip.evaluate --model $(FT)/clip_lit.keras --wise-ft-zero-shot $(DEMO)/clip.keras \
			--alphas 0 0.25 0.5 0.75 1 $(FT_EVAL) --out $(FT)/wise_ft_$$split.json && \
		$(PY) -m keras_clip.evaluate --model $(DEMO)/clip.keras $(FT_EVAL) --out $(FT)/before_$$split.json && \
		$(PY) -m keras_clip.evaluate --model $(FT)/clip_lit.keras $(FT_EVAL) --out $(FT)/after_$$split.json \
		|| exit 1; \
	done

demo-dalle: $(STAMP)
	$(MAKE) --no-print-directory demo-dvae
	$(MAKE) --no-print-directory demo-dalle-train
	$(MAKE) --no-print-directory demo-generate

demo-dvae: $(STAMP)
	rm -rf $(DEMO)/dvae
	$(PY) -m keras_dalle.vae.train --data shapes --preset dvae-shapes-8x8 --logdir $(DEMO)/dvae \
		--out $(DEMO)/dvae.keras --verbose 2

demo-dalle-train: $(STAMP)
	test -f $(DEMO)/dvae.keras || $(MAKE) --no-print-directory demo-dvae
	rm -rf $(DEMO)/dalle
	$(PY) -m keras_dalle.transformer.train --data shapes --vae $(DEMO)/dvae.keras --preset dalle-shapes \
		--max-objects 1 --logdir $(DEMO)/dalle --output $(DEMO)/dalle.keras

# A reranked grid for a few held-out prompts (colour-shape pairs never seen in training).
demo-generate: $(STAMP)
	test -f $(DEMO)/dalle.keras || $(MAKE) --no-print-directory demo-dalle-train
	test -f $(DEMO)/clip.keras || $(MAKE) --no-print-directory demo-clip-train
	$(PY) -m keras_dalle.sampling.generate "a large red circle" "a small green square" \
		"a blue triangle above a yellow diamond" "a large purple star" --model $(DEMO)/dalle.keras \
		--vae $(DEMO)/dvae.keras --clip $(DEMO)/clip.keras --num-samples 8 --keep 4 \
		--out $(DEMO)/dalle_grid.png

demo-serve: $(STAMP)
	test -f $(DEMO)/clip.keras || $(MAKE) --no-print-directory demo-clip-train
	$(PY) -m export.demo_serve --clip $(DEMO)/clip.keras --out $(DEMO)/serving --fast-load \
		$(if $(wildcard $(DEMO)/dvae.keras),--dvae $(DEMO)/dvae.keras) \
		$(if $(wildcard $(DEMO)/dalle.keras),--dalle $(DEMO)/dalle.keras)

# TFLite models of the demo CLIP towers and dVAE decoder, each checked against Keras (full int8
# misses the 0.99 cosine gate and is refused: see BENCHMARKS.md).
tflite: $(STAMP)
	$(PY) -m export.tflite $(DEMO)/clip.keras --all $(DEMO)/tflite --variants fp32,fp16,dynamic-int8
	$(PY) -m export.tflite $(DEMO)/dvae.keras --all $(DEMO)/tflite --variants fp32,fp16,dynamic-int8

clean:
	rm -rf $(VENV) build dist *.egg-info
