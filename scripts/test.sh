#!/usr/bin/env bash
# Runs every test: unit, API-server, broker and end-to-end. Installs and starts what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
source scripts/setup-test.sh
# Formatting and lints first: they fail before the long suites.
cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo build --workspace --bins --quiet
python3 -m pytest charts/tests -q
cargo test --workspace --no-fail-fast -- --test-threads=2
