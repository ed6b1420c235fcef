"""The seed's download pattern, for `benches/http.rs` to measure against `http-download`.

The seed job (an asyncio script) called a blocking fetch from coroutines through
`await loop.run_in_executor(None, fetch, url)`: `None` is the loop's default executor, a
`concurrent.futures.ThreadPoolExecutor` whose `max_workers` is `min(32, os.cpu_count() + 4)`
(Python 3.8+), so on a 2-CPU machine at most 6 fetches run at once, whatever the number of
tasks. This script does the same, with the standard library only:

- one coroutine per URL, all started with `asyncio.gather`; an `asyncio.Semaphore(CONCURRENCY)`
  lets at most CONCURRENCY of them be inside `run_in_executor` at once (tasks in flight); the
  rest wait on the semaphore;
- `fetch` is `urllib.request.urlopen(url, timeout=TIMEOUT).read()` (urllib sends
  `Connection: close`: a new connection per page);
- `--workers N` replaces the default executor with a `ThreadPoolExecutor(max_workers=N)`, a
  variant the seed did not use, to tell the executor's size from the rest of the cost.

Usage: python3 seed_pattern.py URLS_FILE [--concurrency 32] [--timeout 30] [--workers N]

URLS_FILE is JSON Lines with a `url` field per line (the stagewise pipeline's source file).
A fetch that fails is counted, not retried. Prints one JSON line to stdout: pages fetched,
failures, body bytes, the executor's max_workers and the processing window in seconds (from the
first task's start to the last one's end, after reading the file).
"""

import argparse
import asyncio
import concurrent.futures
import json
import os
import sys
import time
import urllib.request


# Set from `--timeout` before any fetch; a global so that the call reads as the seed's did.
TIMEOUT = 30.0


def fetch(url):
    """The seed's blocking fetch: the whole body as bytes."""
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
        return response.read()


async def download_all(urls, concurrency, workers):
    loop = asyncio.get_running_loop()
    if workers is not None:
        loop.set_default_executor(
            concurrent.futures.ThreadPoolExecutor(max_workers=workers)
        )
    in_flight = asyncio.Semaphore(concurrency)
    totals = {"pages": 0, "failed": 0, "bytes": 0}

    async def one(url):
        async with in_flight:
            try:
                body = await loop.run_in_executor(None, fetch, url)
            except Exception as e:  # the seed caught everything per article too
                totals["failed"] += 1
                print(f"fetch {url} failed: {e}", file=sys.stderr)
                return
        totals["pages"] += 1
        totals["bytes"] += len(body)

    started = time.perf_counter()
    await asyncio.gather(*(one(url) for url in urls))
    totals["seconds"] = time.perf_counter() - started
    return totals


def default_max_workers():
    """What `ThreadPoolExecutor()` picks when not told (documented, Python 3.8 to 3.12)."""
    return min(32, (os.cpu_count() or 1) + 4)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("urls_file")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    global TIMEOUT
    TIMEOUT = args.timeout
    with open(args.urls_file, encoding="utf-8") as f:
        urls = [json.loads(line)["url"] for line in f if line.strip()]
    totals = asyncio.run(
        download_all(urls, args.concurrency, args.workers)
    )
    totals["max_workers"] = args.workers or default_max_workers()
    totals["concurrency"] = args.concurrency
    print(json.dumps(totals))
    return 0 if totals["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
