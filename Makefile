# Spillway: the two commands a newcomer runs are `make demo` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
LOGS := target/test-logs
CARGO_TEST_FLAGS ?=
# CI builds once: incremental compilation would only add gigabytes to target/.
ifdef CI
export CARGO_INCREMENTAL := 0
endif

.PHONY: demo test build image prerequisites testbed-up testbed-down bench criterion

prerequisites:
	@e2e/lib/prerequisites.sh

build: prerequisites
	cargo build --workspace --all-targets

## make test: fmt, clippy, unit tests, then the e2e tests on a fresh test bed with Karpenter (torn down even on failure).
test: prerequisites
	@mkdir -p $(LOGS) && rm -f $(LOGS)/*.log
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo test --workspace --exclude spillway-e2e $(CARGO_TEST_FLAGS) 2>&1 | tee $(LOGS)/unit.log
	cargo build -p spillway
	@status=0; \
	  e2e/testbed up --karpenter || status=$$?; \
	  if [[ $$status -eq 0 ]]; then \
	    cargo test -p spillway-e2e --no-fail-fast $(CARGO_TEST_FLAGS) -- --include-ignored --test-threads=2 2>&1 | tee $(LOGS)/e2e.log || status=$$?; \
	  fi; \
	  e2e/testbed down; \
	  if [[ $$status -ne 0 ]]; then echo "make test: FAILED (exit $$status); test bed logs were in e2e/.run/logs" >&2; fi; \
	  e2e/lib/summary.sh $(LOGS)/*.log; \
	  exit $$status

## make demo: a local cluster, simulated nodes, a local ECS endpoint and Karpenter; Spillway bursts a Deployment onto the virtual node and back, then bridges a sustained load until Karpenter's node arrives.
demo: prerequisites
	cargo build -p spillway
	e2e/demo

## make image: the OCI image archive (target/image/spillway-<version>-<arch>.oci.tar) from a
## release build, assembled without a container engine or a registry (deploy/image/build-oci).
image: prerequisites
	cargo build --release --locked -p spillway
	deploy/image/build-oci --binary target/release/spillway

testbed-up: prerequisites
	e2e/testbed up

testbed-down:
	e2e/testbed down

## make bench: benchmarks whose figures go to BENCHMARKS.md (the test suite never times anything).
bench:
	@e2e/lib/prerequisites.sh --bench
	cargo build --release -p spillway -p spillway-bench
	target/release/spillway-bench decision
	target/release/spillway-bench webhook-load
	@status=0; \
	  e2e/testbed up --karpenter || status=$$?; \
	  if [[ $$status -eq 0 ]]; then \
	    SPILLWAY_BIN=target/release/spillway target/release/spillway-bench pod-create || status=$$?; \
	    SPILLWAY_BIN=target/release/spillway target/release/spillway-bench vk-node || status=$$?; \
	    SPILLWAY_BIN=target/release/spillway target/release/spillway-bench aci-node || status=$$?; \
	    SPILLWAY_BIN=target/release/spillway target/release/spillway-bench controller-loop || status=$$?; \
	    SPILLWAY_BIN=target/release/spillway target/release/spillway-bench controller-scale || status=$$?; \
	    SPILLWAY_BIN=target/release/spillway target/release/spillway-bench controller-scale --opted-in 1 || status=$$?; \
	    SPILLWAY_BIN=target/release/spillway target/release/spillway-bench backfill-bridge || status=$$?; \
	  fi; \
	  e2e/testbed down; \
	  exit $$status

## make criterion: the criterion benchmark of the decision (HTML report under target/criterion).
criterion:
	cargo bench -p spillway-webhook --bench decision
