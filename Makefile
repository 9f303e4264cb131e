# rpnet-pl: one-command pipelines. `make help` lists the targets.
#   DATA=/path/to/dataset   dataset root (default: the experiment's dataset.root)
#   GPUS=N NODES=M           scale (DDP); 0 GPUs runs on the CPU
#   LOGGER=wandb|csv|tensorboard|none   (W&B runs offline unless WANDB_API_KEY is set)
#   RUNS=runs                 where run folders go;  DRY=1 prints the commands only
#   SET='a.b=1 c.d=2'         config overrides
#   SEEDS='0 1 2'             run every pipeline / ablation once per seed into RUNS/<experiment>/seed<k>/;
#                             `rpnet report` then shows mean ± std over the seeds (n stated)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RPNET := $(VENV)/bin/rpnet
STAMP := $(VENV)/.installed
SYNTH ?= data/synthetic-voc
# make test: pytest-xdist workers, one thread each (the target: < 10 min on 2 cores)
TEST_WORKERS ?= 2
DATA ?=
GPUS ?= 0
NODES ?= 1
LOGGER ?= wandb
RUNS ?= runs
DRY ?=
BACKBONE ?=
SEEDS ?=
SEED_ARGS = $(if $(strip $(SEEDS)),--seeds $(SEEDS))

PIPE = $(RPNET) pipeline --runs '$(RUNS)' --gpus $(GPUS) --nodes $(NODES) --logger $(LOGGER) \
	$(if $(DATA),--data '$(DATA)') $(if $(DRY),--dry-run) $(if $(SET),--set $(SET)) $(SEED_ARGS) \
	$(if $(or $(SET),$(SEED_ARGS)),--)

VOC_BACKBONES := resnet50 resnet101 resnext50 resnext101 xception wide-resnet50 wide-resnet101 baseline-resnet50
COCO_BACKBONES := resnet50 resnet101 resnext50 resnext101 baseline-resnet50

.PHONY: help install demo demo-pretrained demo-voclike test synth clean-venv $(addprefix voc-,$(VOC_BACKBONES)) $(addprefix coco-,$(COCO_BACKBONES))

help:  ## list the targets
	@grep -E '## ' $(MAKEFILE_LIST) | grep -v grep | sed -E 's/^\$$\(addprefix ablation-,.*## /ablation-NAME: ## /; s/^\$$\(addprefix ([a-z]+)-,.*## /\1-BACKBONE: ## /; s/:.*## /\t/' | column -t -s $$'\t'
	@echo; echo "BACKBONE (voc): $(VOC_BACKBONES)"; echo "BACKBONE (coco): $(COCO_BACKBONES)"

# The stamp is rebuilt only when the pins or the package metadata change: re-running is a no-op.
$(STAMP): requirements.txt setup.cfg setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)

install: $(STAMP)  ## create .venv with pinned versions (no-op when up to date)

synth: $(STAMP)  ## generate the synthetic VOC dataset in $(SYNTH) and check it
	@test -f $(SYNTH)/VOCdevkit/VOC2012/ImageSets/Segmentation/train_aug.txt || $(if $(DRY),echo )$(RPNET) data synth --out $(SYNTH)
	$(if $(DRY),@echo )$(RPNET) data check $(SYNTH) --dataset voc

# $(call side_by_side,EXPERIMENTS,ARGS): `rpnet pipeline experiments/E.yaml ARGS` for each E at once, each
# with an equal share of the usable cores as torch's threads (unless OMP_NUM_THREADS is set), every line
# prefixed with [E]; fails when any fails. The demo's two chains on 2 cores run faster so, one thread
# each, than one after the other on two threads (docs/benchmarks.md, "`make demo`").
core_share = $(shell $(PY) -c "from rpnet_pl.utils.cpus import usable_cpus; print(max(1, usable_cpus() // $(1)))")
side_by_side = pids=(); for e in $(1); do \
	  ( set -o pipefail; export OMP_NUM_THREADS=$${OMP_NUM_THREADS:-$(call core_share,$(words $(1)))}; \
	    echo "[$$e] OMP_NUM_THREADS=$$OMP_NUM_THREADS $(RPNET) pipeline experiments/$$e.yaml $(2)"; \
	    $(RPNET) pipeline experiments/$$e.yaml $(2) 2>&1 | sed -u "s/^/[$$e] /" ) & pids+=($$!); \
	done; rc=0; for p in "$${pids[@]}"; do wait $$p || rc=1; done; exit $$rc

demo: synth  ## the main job: the whole chain on the synthetic dataset (CPU), baseline and RPNet side by side
	@$(call side_by_side,demo_cam demo,--runs '$(RUNS)/demo' --logger $(LOGGER) $(if $(DRY),--dry-run) $(SEED_ARGS))
	$(if $(DRY),@echo )$(RPNET) report '$(RUNS)/demo'

demo-pretrained: synth  ## the whole chain on ImageNet weights (EfficientNet-Lite0, offline), baseline and RPNet (CPU, < 12 min)
	$(RPNET) pipeline experiments/demo_pretrained_cam.yaml --runs '$(RUNS)/demo-pretrained' --logger $(LOGGER) $(if $(DRY),--dry-run) $(SEED_ARGS)
	$(RPNET) pipeline experiments/demo_pretrained.yaml --runs '$(RUNS)/demo-pretrained' --logger $(LOGGER) $(if $(DRY),--dry-run) $(SEED_ARGS)
	$(if $(DRY),@echo )$(RPNET) report '$(RUNS)/demo-pretrained'

# docs/results.md "Seeds or boundary?": the chain to the pseudo masks on the VOC-like variant of the
# synthetic set, then the pseudo masks after each refinement step with IRN's and with the ideal boundary.
SYNTH_VOCLIKE ?= data/synth-voclike
TO_PSEUDO_MASKS = $$($(RPNET) steps --until eval_pseudo_masks)
demo-voclike: $(STAMP)  ## VOC-like synthetic variant: both chains to the pseudo masks + eval-refinement (learned / ideal boundary), ~12 min on 2 cores
	@if [ -z "$(DRY)" ] && [ ! -f $(SYNTH_VOCLIKE)/VOCdevkit/VOC2012/ImageSets/Segmentation/train_aug.txt ]; then \
		$(RPNET) data synth --out $(SYNTH_VOCLIKE) --object-scale 0.35 0.75 --context family > /dev/null; fi
	@for e in demo_cam demo; do $(RPNET) pipeline experiments/$$e.yaml --data $(SYNTH_VOCLIKE) --runs '$(RUNS)/voclike' \
		--logger $(LOGGER) --steps $(TO_PSEUDO_MASKS) $(if $(DRY),--dry-run) $(SEED_ARGS) || exit 1; done
	@for r in demo-cam demo; do for s in $(or $(strip $(SEEDS)),-); do \
		d='$(RUNS)'/voclike/$$r$$([ "$$s" = - ] || echo /seed$$s); for b in learned ground-truth; do \
		$(if $(DRY),echo )$(RPNET) eval-refinement --ckpt "$$d/refine/checkpoints/last.ckpt" \
		--cams "$$d/cam/cams" --root $(SYNTH_VOCLIKE) --pad-to 128 --exp-times 0 4 8 --boundary $$b \
		--out "$$d/eval_refinement_$$b.json" || exit 1; done; done; done

test: $(STAMP)  ## run the test suite (< 10 min on 2 cores)
	OMP_NUM_THREADS=1 WANDB_MODE=offline $(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal tests

$(addprefix voc-,$(VOC_BACKBONES)): voc-%: $(STAMP)  ## full VOC pipeline for a backbone, e.g. make voc-resnext50 DATA=/data/voc GPUS=4
	$(PIPE) experiments/voc_$(subst -,_,$*).yaml

$(addprefix coco-,$(COCO_BACKBONES)): coco-%: $(STAMP)  ## full COCO pipeline for a backbone, e.g. make coco-resnet50 DATA=/data/coco
	$(PIPE) experiments/coco_$(subst -,_,$*).yaml

ABLATIONS := beta blocks gaussian group-size data-volume backbone
ABLATION_EXP ?= experiments/voc_resnext50.yaml
.PHONY: $(addprefix ablation-,$(ABLATIONS)) report

$(addprefix ablation-,$(ABLATIONS)): ablation-%: $(STAMP)  ## a paper table's sweep (beta: V, blocks: IV, gaussian: VI, group-size: VII, data-volume: II, backbone: III); ABLATION_EXP=, BACKBONE=
	$(RPNET) ablation $* $(ABLATION_EXP) --runs '$(RUNS)' --gpus $(GPUS) --nodes $(NODES) --logger $(LOGGER) \
		$(if $(DATA),--data '$(DATA)') $(if $(BACKBONE),--backbone $(BACKBONE)) $(if $(DRY),--dry-run) $(SEED_ARGS)

report: $(STAMP)  ## tables from every run in RUNS -> RUNS/report.md
	$(if $(DRY),@echo )$(RPNET) report '$(RUNS)'

# Every table of the paper as one target: our rows (the other methods' rows are the paper's).
# Tables I and X need COCO: VOC_DATA= / COCO_DATA= set the two roots (default: each experiment's dataset.root).
VOC_DATA ?= $(DATA)
COCO_DATA ?=
TABLES := 1 2 3 4 5 6 7 8 9 10 11
.PHONY: $(addprefix table-,$(TABLES))
define run_targets
	@for t in $(1); do $(MAKE) --no-print-directory $$t $(2) || exit 1; done
endef
table-1: $(STAMP)  ## Table I: seeds / + RPNet / + BR on VOC and COCO train (ResNet-50 baseline and RPNet)
	$(call run_targets,voc-baseline-resnet50 voc-resnet50,DATA='$(VOC_DATA)')
	$(call run_targets,coco-baseline-resnet50 coco-resnet50,DATA='$(COCO_DATA)')
	$(MAKE) --no-print-directory report
table-2: ablation-data-volume  ## Table II (data volume)
table-3: ablation-backbone  ## Table III (backbones)
table-4: ablation-blocks  ## Table IV (feature blocks)
table-5: ablation-beta  ## Table V (beta)
table-6: ablation-gaussian  ## Table VI (Gaussian filter)
table-7: ablation-group-size  ## Table VII (images per group)
table-8 table-9: $(STAMP)  ## Tables VIII / IX: VOC val (+/- CRF) and test export, ResNet-50/101, ResNeXt-50/101
	$(call run_targets,voc-resnet50 voc-resnet101 voc-resnext50 voc-resnext101,DATA='$(VOC_DATA)')
	$(MAKE) --no-print-directory report
table-10: $(STAMP)  ## Table X: COCO val (ResNet-50)
	$(call run_targets,coco-resnet50,DATA='$(COCO_DATA)')
	$(MAKE) --no-print-directory report
table-11: $(STAMP)  ## Table XI: per-class VOC val IoU (ResNet-50, ResNeXt-101)
	$(call run_targets,voc-resnet50 voc-resnext101,DATA='$(VOC_DATA)')
	$(MAKE) --no-print-directory report

# tools/bench.py (a developer tool, not installed): the CPU profile always; the GPU profile (ResNeXt-50 /
# ResNet-50, the paper's batches) too when torch sees CUDA.
BENCH_OUT ?= docs/benchmarks.md
.PHONY: bench
bench: $(STAMP)  ## throughput and peak memory per stage (train + inference) -> its section of docs/benchmarks.md
	$(PY) tools/bench.py --profile cpu --out $(BENCH_OUT)
	@if [ "$$($(PY) -c 'import torch; print(torch.cuda.is_available())')" = "True" ]; then \
		echo "$(PY) tools/bench.py --profile gpu --out $(BENCH_OUT)"; $(PY) tools/bench.py --profile gpu --out $(BENCH_OUT); \
	else echo "no CUDA device: GPU profile skipped"; fi

clean-venv:  ## remove the virtual environment
	rm -rf $(VENV)
