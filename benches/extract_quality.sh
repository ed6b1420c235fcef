#!/usr/bin/env bash
# Article-extraction quality of the `extract` stage: builds the quality example in release, runs
# the stage's engine over a folder of `<id>.html.gz` pages and scores the output with the
# benchmark's scorer. See stages/extract/examples/quality.rs.
#
#   benches/extract_quality.sh [HTML_DIR] [ENGINE] [THREADS]
#
# HTML_DIR defaults to the development split; ENGINE is `stage` (the default) or one of the
# candidates it was chosen from: trafilatura, rs-trafilatura, dom_smoothie. THREADS (default 1)
# workers share the pages, as the stage's pool does.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
bench="${EXTRACT_BENCH:-$root/../shared/bench/extract}"
html="${1:-$bench/html}"
engine="${2:-stage}"
threads="${3:-1}"
truth="${EXTRACT_TRUTH:-$bench/ground-truth.json}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

cargo build --quiet --release --manifest-path "$root/Cargo.toml" \
    -p stagewise-stages-extract --example quality
"$root/target/release/examples/quality" "$engine" "$html" "$out/predictions.jsonl" "$threads"
python3 "$bench/score.py" "$truth" "$out/predictions.jsonl"
