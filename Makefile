# Every target installs what it needs into .venv first; `make help` lists them.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
PYTEST := $(PY) -m pytest
# Tests and demos never reach for the hub: bundled tiny models only, unless you pass --model yourself.
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
RETRIEVAL := $(OFFLINE) $(PY) -m stage1_demos.clip_retrieval
W1 := outputs/week1
CAPTION := $(OFFLINE) $(PY) -m stage1_demos.blip2_caption
W2 := outputs/week2
SD := $(OFFLINE) $(PY) -m stage1_demos.sd_generate
W3 := outputs/week3
ATTENTION := $(OFFLINE) $(PY) -m stage2_fundamentals.attention_lab
DECODING := $(OFFLINE) $(PY) -m stage2_fundamentals.decoding_lab
W4 := outputs/week4
W5 := outputs/week5
DIFFUSION := $(OFFLINE) $(PY) -m stage2_fundamentals.diffusion_lab
W8 := outputs/week8
W6 := outputs/week6
W7 := outputs/week7
W9 := outputs/week9
W10 := outputs/week10
W11 := outputs/week11
PROMPTS_MODEL := data/models/tiny-blip2-prompts/config.json
COMPLIANCE_MODEL := data/models/tiny-blip2-compliance/config.json
HOST ?= 127.0.0.1
PORT ?= 8000

.DEFAULT_GOAL := help
.PHONY: help install demo lint test docs report bench train week1 week2 week3 week4 week5 week6 week7 lora qformer tiny-blip2-prompts tiny-blip2-compliance week8 week9 export serve serve-ray ui week10 week11 week12 tiny-models remake clean lavis-venv triton-venv peers bench-peers peers-test week2-lavis colab-env colab-test notebooks

help: ## list the targets
	@grep -E '^[a-zA-Z0-9_%-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

# CPU-only Linux takes the CPU build of torch (~200 MB) before anything else can ask for torch,
# which would pull PyPI's default CUDA build (several GB). If pip's own configuration already
# offers a +cpu wheel (a local wheelhouse), that one is used; otherwise the PyTorch CPU index.
$(VENV)/.torch:
	python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	@if [ "$$(uname -s)" = Linux ] && ! command -v nvidia-smi >/dev/null 2>&1; then \
	  if $(PIP) install --dry-run --no-deps --quiet --report - torch==$(TORCH_VERSION) 2>/dev/null \
	      | grep -q '"version": "$(TORCH_VERSION)+cpu"'; then \
	    $(PIP) install --quiet torch==$(TORCH_VERSION); \
	  else \
	    $(PIP) install --quiet torch==$(TORCH_VERSION) --index-url $(TORCH_CPU_INDEX) \
	      --extra-index-url https://pypi.org/simple; \
	  fi; \
	else \
	  $(PIP) install --quiet torch==$(TORCH_VERSION); \
	fi
	touch $@

$(VENV)/.installed: $(VENV)/.torch pyproject.toml
	$(PIP) install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed ## create .venv and install (CPU torch on CPU-only Linux)

demo: week1 ## the main demo: week 1 on the bundled tiny CLIP

lint: $(VENV)/.installed ## ruff (lint and format) and the import contracts (one-way layers, no cycles)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

# The JUnit XML is what `make report` reads each milestone's status from.
test: lint ## the linters, then every milestone's tests (the serving peers' have their own target: peers-test)
	$(OFFLINE) $(PYTEST) -m "not peers" --junitxml=outputs/tests.xml

docs: $(VENV)/.installed ## rewrite the docs' measured tables from results/ (the reference run)
	$(PY) -m curriculum.docs

notebooks: $(VENV)/.installed ## write each week's Colab notebook (notebooks/*.ipynb) from its script (notebooks/*.py)
	$(PY) -m curriculum.notebooks build

report: $(VENV)/.installed ## your lab notebook: outputs/report.html from whatever you have run
	$(PY) -m curriculum.report

test-week%: $(VENV)/.installed ## run one milestone, e.g. make test-week1
	$(OFFLINE) $(PYTEST) -m "week$* and not peers"

week1: $(VENV)/.installed ## CLIP retrieval: gallery, index, text and image queries, recall table, zero-shot classification
	$(OFFLINE) $(PY) -m curriculum.shapesworld export --n 300 --split test --out $(W1)/gallery
	$(RETRIEVAL) index --images $(W1)/gallery --out $(W1)/index
	$(RETRIEVAL) search --index $(W1)/index --text "a red circle" --out $(W1)/text_red_circle.png
	$(RETRIEVAL) search --index $(W1)/index --text "a large blue square in the bottom right" \
	  --out $(W1)/text_blue_square.png
	$(RETRIEVAL) search --index $(W1)/index --text "a small yellow cross at the top left and a large green triangle at the bottom right" \
	  --out $(W1)/text_two_objects.png
	$(RETRIEVAL) search --index $(W1)/index --image $(W1)/gallery/test_00007.png \
	  --out $(W1)/image_query.png
	$(RETRIEVAL) eval --split test --out $(W1)/eval.json
	$(OFFLINE) $(PY) -m stage1_demos.clip_zeroshot --out $(W1)/zeroshot.json
	@echo "pictures: $(W1)/*.png"

week2: $(VENV)/.installed $(PROMPTS_MODEL) ## BLIP-2 captioning: gallery captions, prompts side by side, explain, accuracy, the plan's prompt exercise
	$(OFFLINE) $(PY) -m curriculum.shapesworld export --n 16 --split test --out $(W2)/gallery
	$(CAPTION) caption $(W2)/gallery/*.png --out $(W2)/captions.png
	$(CAPTION) caption $(W2)/gallery/test_0000[0-3].png --prompt "a photo of" --num-beams 3
	$(CAPTION) ask $(W2)/gallery/test_00000.png --question "how many shapes are there?"
	$(CAPTION) prompts $(W2)/gallery/test_00001.png --out $(W2)/prompts.png --json > $(W2)/prompts.json
	$(CAPTION) prompts $(W2)/gallery/test_00001.png --prompt "Describe the image in one sentence." \
	  --prompt "Question: what is the weather? Answer:" --json > $(W2)/untrained_prompts.json
	$(CAPTION) explain $(W2)/gallery/test_00001.png
	$(CAPTION) eval --split test --out $(W2)/eval.json
	$(OFFLINE) $(PY) -m stage1_demos.prompt_styles --out $(W2)/prompt_styles.json
	@echo "pictures: $(W2)/*.png"

week3: $(VENV)/.installed ## Stable Diffusion: generate, schedulers x steps, the latent journey, attention, fidelity
	$(SD) generate --prompt "a large red circle in the top left" --n 4 --out $(W3)/generate.png
	$(SD) generate --prompt "a small yellow square in the top right and a large purple cross in the bottom left" \
	  --n 4 --out $(W3)/generate_two.png
	$(SD) compare --prompt "a large green triangle in the bottom right" --seed 0 --out $(W3)/compare.png \
	  --json > $(W3)/compare.json
	$(SD) explain --prompt "a large red circle in the top left" --out $(W3)/journey.png
	for token in circle square red; do \
	  $(SD) attention --prompt "a large red circle in the top left and a large blue square in the bottom right" \
	    --token $$token --out $(W3)/attention_$$token.png --json > $(W3)/attention_$$token.json || exit 1; \
	done
	$(SD) eval --split test --out $(W3)/eval.json
	@echo "pictures: $(W3)/*.png"

week4: $(VENV)/.installed ## attention from scratch: checks against torch/CLIP/OPT, attention heatmaps
	$(OFFLINE) $(PY) -m curriculum.shapesworld export --n 4 --split test --out $(W4)/gallery
	$(ATTENTION) check
	$(ATTENTION) check --json > $(W4)/check.json
	$(ATTENTION) show --image $(W4)/gallery/test_00001.png --out $(W4)/attention.png
	$(ATTENTION) show --image $(W4)/gallery/test_00002.png --prompt "a photo of" --out $(W4)/attention_photo.png
	@echo "pictures: $(W4)/*.png"

week5: $(VENV)/.installed ## decoding from scratch: checks against generate(), beam-search mistakes they catch, a settings sweep, the repetition fix
	$(OFFLINE) $(PY) -m curriculum.shapesworld export --n 4 --split test --out $(W5)/gallery
	@mkdir -p $(W5)
	set -o pipefail; $(DECODING) check --json | tee $(W5)/check.json
	$(DECODING) mistakes --out $(W5)/mistakes.json
	$(DECODING) sweep --image $(W5)/gallery/test_00001.png --out $(W5)/sweep.json
	$(DECODING) repetition --out $(W5)/repetition.json
	@echo "tables: $(W5)/*.json"

week6: $(VENV)/.installed ## InfoNCE from cross-entropy: check, a tiny CLIP trained with it, negatives, temperature, learning rate (CLIP and a BLIP-2 fine-tune), ViT vs CNN
	@mkdir -p $(W6)
	set -o pipefail; $(OFFLINE) $(PY) -m stage2_fundamentals.infonce_lab check --json | tee $(W6)/check.json
	$(OFFLINE) $(PY) -m stage2_fundamentals.infonce_lab train --out $(W6)
	$(OFFLINE) $(PY) -m stage2_fundamentals.infonce_lab negatives --out $(W6)
	$(OFFLINE) $(PY) -m stage2_fundamentals.infonce_lab lr --out $(W6)
	$(OFFLINE) $(PY) -m stage3_moderation.blip2_lr_sweep --out $(W6)/blip2_lr.json
	$(OFFLINE) $(PY) -m stage2_fundamentals.infonce_lab towers --out $(W6)
	@echo "results and plots: $(W6)/"

week7: lora qformer ## `make lora` and `make qformer`, then the projection-head ablation, Chinese and English queries on the English CLIP's index
	$(OFFLINE) $(PY) -m stage2_fundamentals.projection --out $(W7)
	$(OFFLINE) $(PY) -m stage2_fundamentals.crosslingual eval --out $(W7)/crosslingual.json
	$(OFFLINE) $(PY) -m curriculum.shapesworld export --n 300 --split test --out $(W7)/gallery
	$(RETRIEVAL) index --images $(W7)/gallery --out $(W7)/index
	$(RETRIEVAL) search --index $(W7)/index --text "左边的红色圆形" --out $(W7)/search_zh.png --json > $(W7)/search_zh.json
	$(RETRIEVAL) search --index $(W7)/index --text "a red circle" --out $(W7)/search_en.png
	@echo "results: $(W7)/"

lora: $(VENV)/.installed ## fine-tuning (week 7): LoRA and prefix tuning vs PEFT, a new colour taught three ways, LoRA on every linear layer
	@mkdir -p $(W7)
	set -o pipefail; $(OFFLINE) $(PY) -m stage2_fundamentals.finetuning_lab check --json | tee $(W7)/finetuning_check.json
	$(OFFLINE) $(PY) -m stage2_fundamentals.finetuning_lab experiment --out outputs/week7
	$(OFFLINE) $(PY) -m stage2_fundamentals.finetuning_lab experiment --ranks 16 --out $(W7)/lora_all_layers \
	  --targets q_proj k_proj v_proj out_proj $(foreach l,0 1 2,decoder.layers.$(l).fc1 decoder.layers.$(l).fc2) query key value dense
	@echo "table and plots: outputs/week7/new_concept.*, outputs/week7/lora_all_layers/"

qformer: $(VENV)/.installed ## what the Q-Former is for (week 7): 8 and 2 queries vs a projector of every patch, one recipe
	$(OFFLINE) $(PY) -m stage2_fundamentals.qformer_lab compare --out $(W7)

week8: $(VENV)/.installed ## DDPM / DDIM from scratch vs diffusers (and with each named mistake), the pipeline reproduced, samplers x steps, the forward process
	$(OFFLINE) $(PY) -m curriculum.shapesworld export --n 4 --split test --out $(W8)/gallery
	$(DIFFUSION) check
	$(DIFFUSION) check --json > $(W8)/check.json
	$(DIFFUSION) mistakes --json > $(W8)/mistakes.json
	$(DIFFUSION) sample --prompt "a large red circle in the top left" --seed 0 --out $(W8)/sample_ddim.png \
	  --json > $(W8)/sample_ddim.json
	$(DIFFUSION) sample --prompt "a large red circle in the top left" --seed 0 --eta 1 --out $(W8)/sample_ddim_eta1.png \
	  --json > $(W8)/sample_ddim_eta1.json
	$(DIFFUSION) sample --prompt "a large red circle in the top left" --seed 0 --sampler ddpm \
	  --out $(W8)/sample_ddpm.png --json > $(W8)/sample_ddpm.json
	$(DIFFUSION) compare --prompt "a small yellow square in the top right and a large purple cross in the bottom left" \
	  --seed 0 --step-counts 3 5 10 25 50 --n 6 --out $(W8)/compare.png
	$(DIFFUSION) forward --image $(W8)/gallery/test_00001.png --out $(W8)/forward.png --json > $(W8)/forward.json
	@echo "pictures: $(W8)/*.png"

export: $(VENV)/.installed ## ONNX export of the tiny CLIP and BLIP-2 (fp32 + int8) with parity checks
	$(OFFLINE) $(PY) -m stage3_moderation.export_onnx --out outputs/onnx/tiny

week9: export $(PROMPTS_MODEL) $(COMPLIANCE_MODEL) ## ONNX export with parity (`make export`), the demo policy measured on generated scenes, caption rule vs visual question, the policy that asks
	$(OFFLINE) $(PY) -m stage3_moderation.policy show
	$(OFFLINE) $(PY) -m stage3_moderation.policy evaluate --n 600 --out $(W9)/policy.json
	$(OFFLINE) $(PY) -m stage3_moderation.vqa_rule --n 600 --out $(W9)/vqa_rule.json
	$(OFFLINE) $(PY) -m stage3_moderation.policy evaluate --policy data/policies/shapesworld-vqa.yaml --n 600 --out $(W9)/policy_vqa.json
	@echo "results: outputs/onnx/tiny/manifest.json, $(W9)/policy.json, $(W9)/vqa_rule.json, $(W9)/policy_vqa.json"

serve: $(VENV)/.installed ## the moderation API on $(HOST):$(PORT) with the tiny models (Ctrl-C stops it)
	$(OFFLINE) $(PY) -m stage3_moderation.serve --host $(HOST) --port $(PORT)

# serve run starts a local Ray cluster, deploys the config and stops both on Ctrl-C (SIGINT); the URL is
# the config's http_options. On a cluster: serve deploy on the same file (docs/ray-serve.md).
serve-ray: $(VENV)/.installed ## the same API on Ray Serve (configs/serve/moderation.yaml), http://127.0.0.1:8000 (Ctrl-C stops it)
	@echo "moderation on Ray Serve: http://127.0.0.1:8000 once the log says the application is ready; Ctrl-C stops it"
	$(OFFLINE) RAY_USAGE_STATS_ENABLED=0 $(VENV)/bin/serve run configs/serve/moderation.yaml

$(VENV)/.ui-installed: $(VENV)/.installed
	$(PIP) install --quiet -e '.[ui]'
	touch $@

UI_PORT ?= 7860
ui: $(VENV)/.ui-installed ## the demos as a web app (Gradio) on $(HOST):$(UI_PORT), the tiny models (Ctrl-C stops it)
	$(OFFLINE) $(PY) -m stage3_moderation.ui --host $(HOST) --port $(UI_PORT)

# Starts the server in the background, waits for /readyz, runs week 10's curl examples (docs/week10.md), stops it.
week10: $(VENV)/.installed ## the service: start it, the curl examples of docs/week10.md, stop it
	$(OFFLINE) $(PY) -m curriculum.shapesworld export --n 4 --split test --out $(W10)/gallery
	@$(OFFLINE) $(PY) -m stage3_moderation.serve --host 127.0.0.1 --port 8000 \
	  --log-level warning & \
	  server=$$!; trap "kill $$server" EXIT; \
	  for i in $$(seq 600); do curl -sf http://127.0.0.1:8000/readyz >/dev/null && break; \
	    kill -0 $$server 2>/dev/null || exit 1; sleep 0.5; done; \
	  bash stage3_moderation/curl_examples.sh && \
	  curl -sf http://127.0.0.1:8000/v1/moderations -F image=@$(W10)/gallery/test_00001.png \
	    -F text="a small green cross in the top right" -o $(W10)/example.json  # the answer docs/week10.md shows

week11: $(VENV)/.installed ## load test (2,000 requests at concurrency 32) and the moderation benchmark
	$(OFFLINE) $(PY) -m stage3_moderation.loadgen --serve --n 2000 --concurrency 32 --kind mixed --out $(W11)/load.json
	$(OFFLINE) $(PY) -m stage3_moderation.bench --out $(W11)
	@echo "tables and plot: $(W11)/moderation.md, $(W11)/moderation.png"

week12: $(VENV)/.installed ## interview: tensor drills, the question list, STAR write-ups from outputs/
	@mkdir -p outputs/week12
	set -o pipefail; $(OFFLINE) $(PY) -m interview.einsum_attention check --json | tee outputs/week12/check.json
	$(OFFLINE) $(PY) -m interview.drill --list
	$(OFFLINE) $(PY) -m interview.star --out outputs/week12/star.md
	@echo "quiz yourself: $(PY) -m interview.drill"

bench: $(VENV)/.installed ## benchmarks, as ratios measured in one run: training on 1 vs 2 processes, KV cache (week 5), engines, service, Ray Serve, the serving peers (week 11)
	$(OFFLINE) $(PY) -m curriculum.train_bench --out outputs/bench
	$(DECODING) bench --out outputs/bench/kv_cache.json
	$(OFFLINE) $(PY) -m stage3_moderation.bench --out outputs/bench
	$(OFFLINE) $(PY) -m stage3_moderation.ray_bench --out outputs/bench/ray.json
	$(OFFLINE) $(PY) -m stage3_moderation.liveness --out outputs/bench/liveness.json
	$(MAKE) bench-peers

# The serving peers of week 10's batcher (issue 31): LitServe in .venv (the `peers` extra), Triton
# through PyTriton in .venv-triton (it pins numpy<2: stage3_moderation/triton_venv.sh says why each step).
$(VENV)/.peers-installed: $(VENV)/.installed
	$(PIP) install --quiet -e '.[peers]'
	touch $@

TRITON_VENV := .venv-triton
$(TRITON_VENV)/.installed: stage3_moderation/triton_venv.sh pyproject.toml
	bash stage3_moderation/triton_venv.sh $(TRITON_VENV)  # it writes $@ once its import check passes

triton-venv: $(TRITON_VENV)/.installed ## the virtual environment Triton (PyTriton) serves from: .venv-triton

peers: $(VENV)/.peers-installed $(TRITON_VENV)/.installed

bench-peers: peers ## week 10's batcher against LitServe, Triton (PyTriton) and Ray Serve: outputs/bench/peers.json, peers.png
	$(OFFLINE) $(PY) -m stage3_moderation.peers_bench --out outputs/bench/peers.json

peers-test: peers ## the serving peers' parity and bad-input tests (LitServe, Triton), in CI
	$(OFFLINE) $(PYTEST) -m peers --junitxml=outputs/peers-tests.xml

# make train MODEL=clip NPROC=2 ARGS="--steps 300": one trainer on NPROC processes (accelerate launch),
# written to outputs/train/MODEL unless ARGS names another --out; --resume continues a killed run.
TRAINER_clip := curriculum.tiny_clip
TRAINER_blip2 := curriculum.tiny_blip2
TRAINER_sd := curriculum.tiny_sd
TRAINER_clip-zh := stage2_fundamentals.crosslingual train
MODEL ?= clip
NPROC ?= 1
train: $(VENV)/.installed ## train a tiny model on NPROC processes: make train MODEL=clip|blip2|sd|clip-zh NPROC=2 [ARGS=...]
	@test -n "$(TRAINER_$(MODEL))" || { echo "error: MODEL=$(MODEL) is none of clip, blip2, sd, clip-zh" >&2; exit 2; }
	$(OFFLINE) $(PY) -m $(TRAINER_$(MODEL)) --out outputs/train/$(MODEL) --nproc $(NPROC) $(ARGS)

tiny-models: $(VENV)/.installed ## retrain the bundled checkpoints in data/models (fixed seed; --force: they replace the bundled ones)
	$(OFFLINE) $(PY) -m curriculum.tiny_clip --out data/models/tiny-clip --seed 0 --force
	$(OFFLINE) $(PY) -m stage2_fundamentals.crosslingual train --out data/models/tiny-clip-zh --seed 0 --force
	$(OFFLINE) $(PY) -m curriculum.tiny_blip2 --out data/models/tiny-blip2 --seed 0 --force
	$(OFFLINE) $(PY) -m curriculum.tiny_blip2_prompts --out data/models/tiny-blip2-prompts --seed 0 --force
	$(OFFLINE) $(PY) -m curriculum.tiny_blip2_compliance --out data/models/tiny-blip2-compliance --seed 0 --force
	$(OFFLINE) $(PY) -m curriculum.tiny_sd --out data/models/tiny-sd --seed 0 --force

# Provenance: every bundled checkpoint records what made it (training.json); `make test` checks it against
# today's code (tests/test_provenance.py). This remakes one from scratch and compares it weight by weight.
CHECKPOINT ?= tiny-clip-zh
remake: $(VENV)/.installed ## remake one bundled checkpoint from scratch and compare, bit for bit (CHECKPOINT=tiny-clip-zh)
	$(OFFLINE) $(PY) -m curriculum.remake $(CHECKPOINT)

# The bundled BLIP-2 fine-tuned on the plan's prompt exercise (week 2) and balanced yes/no questions (week 9),
# then held to week 2's accuracy thresholds; committed, so this runs only when asked or when it is missing.
$(PROMPTS_MODEL):
	$(MAKE) --no-print-directory tiny-blip2-prompts

tiny-blip2-prompts: $(VENV)/.installed ## fine-tune the bundled BLIP-2 on the plan's prompts (seed 0), then its accuracy table
	$(PY) -m curriculum.tiny_blip2_prompts --out data/models/tiny-blip2-prompts --seed 0 --force
	$(CAPTION) eval --split test --model data/models/tiny-blip2-prompts --out $(W2)/eval_prompts.json

# The bundled BLIP-2 fine-tuned to answer compliance questions by looking (week 9's visual-question rule);
# committed, so this runs only when asked or when it is missing.
$(COMPLIANCE_MODEL):
	$(MAKE) --no-print-directory tiny-blip2-compliance

tiny-blip2-compliance: $(VENV)/.installed ## fine-tune the bundled BLIP-2 on balanced yes/no compliance questions with near misses (seed 0)
	$(OFFLINE) $(PY) -m curriculum.tiny_blip2_compliance --out data/models/tiny-blip2-compliance --seed 0 --force

clean: ## remove outputs/ (keeps .venv and data/models)
	rm -rf outputs

# Colab's own library versions (requirements-colab.txt: torch 2.11, transformers 5.15, numpy 2.1, ...)
# in .venv-colab, where the weeks' tests and the notebooks run too (`make colab-test`, from .ci/run):
# the floors in pyproject.toml are those pins (tests/test_floors.py). torch first, alone: PyPI's
# default 2.11.0 wheel (the CUDA 13.0 build, ~4.6 GB; it runs on the CPU here); then every pin, so
# pip never chooses another version of a pinned package; then the project itself without
# dependencies. pip check then fails the build if the project needs anything the pins lack.
COLAB_VENV := .venv-colab
COLAB_PY := $(COLAB_VENV)/bin/python
COLAB_MARKERS := week1 or week2 or week3 or week4 or week5 or week6 or week7 or week8 or week9 or week10 \
  or week11 or week12 or notebooks or ui
$(COLAB_VENV)/.colab-installed: requirements-colab.txt pyproject.toml
	python3 -m venv $(COLAB_VENV)
	$(COLAB_PY) -m pip install --quiet "$$(grep -E '^torch==' requirements-colab.txt)"
	$(COLAB_PY) -m pip install --quiet -r requirements-colab.txt
	$(COLAB_PY) -m pip install --quiet --no-deps -e .
	$(COLAB_PY) -m pip check
	touch $@

colab-env: $(COLAB_VENV)/.colab-installed ## .venv-colab: Colab's library versions (requirements-colab.txt)

colab-test: $(COLAB_VENV)/.colab-installed ## the weeks' tests and the notebooks on Colab's library versions, in .venv-colab
	$(OFFLINE) $(COLAB_PY) -m pytest -m "($(COLAB_MARKERS)) and not peers" --junitxml=outputs/colab-tests.xml

# Optional LAVIS backend for week 2. LAVIS 1.0.2 pins transformers<4.27, so it gets a venv of its
# own (torch chosen by the .torch rule above, as for .venv) and runs only as a subprocess of
# blip2_caption (stage1_demos/lavis_backend.py). requirements-lavis.txt pins every package the runner
# imports, so pip installs it with --no-deps (no resolver, none of LAVIS's unused dependencies); the
# runner's imports are then tried once, so a venv that cannot import LAVIS is never marked installed.
LAVIS_VENV := .venv-lavis
$(LAVIS_VENV)/.lavis-installed: requirements-lavis.txt
	$(MAKE) --no-print-directory VENV=$(LAVIS_VENV) $(LAVIS_VENV)/.torch
	$(LAVIS_VENV)/bin/python -m pip install --quiet --no-deps -r requirements-lavis.txt
	cd stage1_demos && ../$(LAVIS_VENV)/bin/python -W ignore -c "import lavis_runner"
	touch $@

lavis-venv: $(LAVIS_VENV)/.lavis-installed ## optional: LAVIS 1.0.2 in .venv-lavis for blip2_caption --backend lavis

week2-lavis: $(VENV)/.installed lavis-venv ## week 2 in LAVIS: both libraries on the same weights, side by side
	$(OFFLINE) $(PY) -m stage1_demos.lavis_parity --n 100 --out $(W2)/backends.png --json > $(W2)/lavis_parity.json
	$(OFFLINE) $(PY) -m curriculum.shapesworld export --n 16 --split test --out $(W2)/gallery
	$(CAPTION) caption $(W2)/gallery/test_0000[0-3].png --backend lavis
	$(CAPTION) caption $(W2)/gallery/test_0000[0-3].png --prompt "a photo of" --num-beams 3 --backend lavis
	$(CAPTION) ask $(W2)/gallery/test_00000.png --question "how many shapes are there?" --backend lavis
	$(CAPTION) prompts $(W2)/gallery/test_00001.png --backend lavis --out $(W2)/prompts_lavis.png
	@echo "pictures: $(W2)/backends.png, $(W2)/prompts_lavis.png"
