#!/usr/bin/env bash
# Installs the Debian packages the tests need, only those missing: a no-op when all are present.
#
# Each entry is "package:command-or-path-that-proves-it-is-installed". The list grows with the
# tests: today's tests (the policy crate) need nothing beyond the Rust toolchain.
set -euo pipefail

REQUIRED=(
)

missing=()
for entry in "${REQUIRED[@]}"; do
    pkg=${entry%%:*}
    probe=${entry#*:}
    if [[ $probe == /* ]]; then
        [[ -e $probe ]] && continue
    else
        command -v "$probe" >/dev/null 2>&1 && continue
    fi
    missing+=("$pkg")
done

for tool in cargo rustfmt cargo-clippy; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "install-test-deps: '$tool' is missing: install the Rust toolchain with rustfmt and clippy (rustup component add rustfmt clippy)" >&2
        exit 1
    fi
done

if ((${#missing[@]} == 0)); then
    echo "install-test-deps: everything the tests need is installed"
    exit 0
fi

echo "install-test-deps: installing ${missing[*]}"
sudo=()
if [[ $(id -u) -ne 0 ]]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "install-test-deps: need root (or sudo) to apt-get install ${missing[*]}" >&2
        exit 1
    fi
    sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
