# peerpod-guest: the two commands a newcomer runs are `make demo` and `make test`.

CARGO ?= cargo
SHELL := /bin/bash

.PHONY: demo test deps fmt-check clippy unit bench fuzz help podvm webhook-image

## demo: run the bundle's main job end to end on the embedded sample (see README).
demo: deps
	@scripts/demo.sh

## test: install what the tests need, then fmt, clippy and every test.
test: deps fmt-check clippy unit

## deps: install missing Debian packages the tests need (a no-op when present).
deps:
	@scripts/install-test-deps.sh

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit:
	$(CARGO) test --workspace

## bench: the benchmarks; they print their figures (the agent's needs root).
bench:
	$(CARGO) bench -p peerpod-policy --bench decision
	$(CARGO) bench -p kata-agent --bench agent
	$(CARGO) bench -p attestation-agent --bench attest
	$(CARGO) bench -p confidential-data-hub --bench resource

## podvm: the pod VM disk image (qcow2 + fixed VHD + UKI) in target/podvm-image/out (root; see docs/podvm-image.md).
podvm:
	@podvm-image/build.sh

## webhook-image: the webhook's container image (OCI layout + docker-archive) in target/webhook-image (see docs/webhook.md).
webhook-image:
	@webhook/image/build.sh

## fuzz: coverage-guided fuzzing of every target for FUZZ_SECONDS each (needs cargo-fuzz).
FUZZ_SECONDS ?= 60
fuzz:
	@scripts/fuzz.sh $(FUZZ_SECONDS)

help:
	@grep -E '^## ' Makefile | sed 's/^## //'
