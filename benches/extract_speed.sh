#!/usr/bin/env bash
# Extraction speed of the `extract` stage against Python trafilatura on the same pages, in the
# same session: pages per second single-threaded and with a pool of 2, interleaved with the
# baseline, 3 rounds. See BENCHMARKS.md.
#
#   benches/extract_speed.sh [HTML_DIR]
#
# The baseline runs in a throwaway virtualenv (trafilatura from PyPI; not a dependency of the
# project): $TRAFILATURA_PYTHON if set, else one created under /tmp and reused.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
bench="${EXTRACT_BENCH:-$root/../shared/bench/extract}"
html="${1:-$bench/html}"
python="${TRAFILATURA_PYTHON:-}"
if [[ -z "$python" ]]; then
    venv=/tmp/stagewise-trafilatura-venv
    [[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
    "$venv/bin/python" -c "import trafilatura" 2>/dev/null || "$venv/bin/pip" install --quiet trafilatura lxml_html_clean
    python="$venv/bin/python"
fi
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

cargo build --quiet --release --manifest-path "$root/Cargo.toml" \
    -p stagewise-stages-extract --example quality
cat > "$out/baseline.py" <<'PY'
import glob, gzip, sys, time
import trafilatura
pages = [gzip.open(p, "rt", encoding="utf-8").read() for p in sorted(glob.glob(sys.argv[1] + "/*.html.gz"))]
trafilatura.extract(pages[0])  # imports and caches warmed up, like the stage's first page
started = time.perf_counter()
for html in pages:
    trafilatura.extract(html)
spent = time.perf_counter() - started
print(f"python trafilatura {trafilatura.__version__}: {len(pages)} pages, 1 thread, {spent * 1000 / len(pages):.2f} ms/page (wall), {len(pages) / spent:.1f} pages/s")
PY
for round in 1 2 3; do
    echo "round $round"
    "$python" "$out/baseline.py" "$html"
    "$root/target/release/examples/quality" stage "$html" "$out/p1.jsonl" 1
    "$root/target/release/examples/quality" stage "$html" "$out/p2.jsonl" 2
done
