#!/usr/bin/env bash
# Runs every cargo-fuzz target for $1 seconds (default 60). Needs cargo-fuzz
# (`cargo install cargo-fuzz`); libFuzzer needs nightly features, enabled here on the stable
# toolchain with RUSTC_BOOTSTRAP=1.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-60}
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: cargo-fuzz is missing; install it with: cargo install cargo-fuzz" >&2
    exit 1
fi
for target in $(cargo fuzz list); do
    echo "== fuzz target $target for ${seconds}s"
    RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" -- -max_total_time="$seconds" -rss_limit_mb=2048
done
