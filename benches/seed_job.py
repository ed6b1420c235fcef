"""The seed's job in the seed's style, for `benches/seed_side_by_side.rs` to run beside the
digest pipeline on the same servers and items.

The seed is the incident stagewise answers (README.md, first section), as its write-up tells
it: `digest_articles.py`, an asyncio batch job that read unprocessed articles, downloaded each
page, extracted its text, asked an LLM for facts and wrote the result back; on its container
platform it hung, was SIGKILLed and left no trace. This script keeps what the write-up shows
of that job:

- logging configured at import: `logging.basicConfig(level=INFO, format="%(asctime)s -
  %(levelname)s - %(message)s", force=True)`, a log line per step of every article, and the
  `>>>…<<<` markers printed with `flush=True`;
- the signal handler installed at import for SIGTERM and SIGINT with `signal.signal`: it writes
  "[SIGNAL-HANDLER] Received signal - flushing and exiting gracefully" to stdout and stderr,
  flushes both, calls `logging.shutdown()` and `sys.exit(0)`;
- the batch query `... LIMIT ?` bound to BATCH_SIZE, with no statement timeout;
- the page fetched with a blocking call directly in the coroutine (`downloaded =
  trafilatura.fetch_url(url)`), so the event loop stops while a page downloads;
- the LLM call `result_json = await loop.run_in_executor(None, self.extract_facts_with_llm,
  full_text)`: the loop's default executor (`min(32, cpus + 4)` threads), no timeout on the
  future, and none on the HTTP call inside it;
- `asyncio.run(engine.process_batch())`, and `sys.exit(0)` at the end whatever happened to the
  articles (an article's exception is logged and the next one goes on).

Simplified or assumed (the write-up does not show them):

- SQLite (`sqlite3`) instead of PostgreSQL, with the digest pipeline's tables (`articles`,
  `digests`); each article's digest is written and committed as soon as its answer is back (an
  upsert, then `processed_at` set), the most favourable reading for a kill;
- `urllib.request.urlopen(url, timeout=--fetch-timeout)` instead of `trafilatura.fetch_url`
  (trafilatura's own default timeout is 30 s, the default here), and a crude extraction: the
  `<title>` and the text of the `<p>` elements, tags and entities removed;
- the LLM call is an OpenAI-compatible chat completion sent with `urllib` (no client library,
  so no client-side timeout or retry); the prompt starts with `Article <id>` as the digest
  pipeline's does in the bench, and the answer is parsed as JSON;
- one coroutine per article, started together with `asyncio.gather`; an `asyncio.Semaphore`
  lets at most `--concurrency` of them run at once (as `benches/seed_pattern.py`);
- a failed article stays unprocessed (no failure column is set): the next run takes it again.

Usage: python3 seed_job.py DATABASE --llm-base-url URL [--model M] [--concurrency 32]
       [--fetch-timeout 30] [--batch-size 500]

The key comes from OPENAI_API_KEY. At the end it prints one JSON line to stdout: articles
taken, digested, failed, and the processing window in seconds.
"""

import argparse
import asyncio
import html
import json
import logging
import os
import re
import signal
import sqlite3
import sys
import time
import urllib.request


def signal_handler(signum, frame):
    """Handle SIGTERM/SIGINT for graceful container shutdown"""
    msg = "\n[SIGNAL-HANDLER] Received signal - flushing and exiting gracefully\n"
    sys.stdout.write(msg)
    sys.stderr.write(msg)
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    sys.exit(0)


signal.signal(signal.SIGTERM, signal_handler)
signal.signal(signal.SIGINT, signal_handler)

logging.basicConfig(
    level=logging.INFO,
    format="%(asctime)s - %(levelname)s - %(message)s",
    force=True,
)
logger = logging.getLogger(__name__)

BATCH_SIZE = 500
MAX_CONCURRENT = 32
FETCH_TIMEOUT = 30.0
LLM_BASE_URL = ""
LLM_MODEL = "bench"

SYSTEM_PROMPT = (
    "You extract verifiable facts from news articles. Answer with a JSON object: "
    '{"facts": [one short sentence per fact], "summary": "one sentence"}.'
)


class DigestEngine:
    def __init__(self, database):
        self.conn = sqlite3.connect(database)
        self.digested = 0
        self.failed = 0
        logger.info("✅ Database connection established")

    def fetch_unprocessed_articles(self):
        cur = self.conn.cursor()
        query = (
            "SELECT id, url, source FROM articles WHERE processed_at IS NULL "
            "ORDER BY id LIMIT ?"
        )
        cur.execute(query, (BATCH_SIZE,))
        return cur.fetchall()

    def extract_text(self, downloaded):
        """The title and the paragraphs' text: crude, standard library only."""
        page = re.sub(r"(?is)<(script|style)\b.*?</\1>", " ", downloaded)
        title = re.search(r"(?is)<title[^>]*>(.*?)</title>", page)
        title = html.unescape(re.sub(r"<[^>]+>", "", title.group(1))).strip() if title else ""
        paragraphs = []
        for p in re.findall(r"(?is)<p\b[^>]*>(.*?)</p>", page):
            text = html.unescape(re.sub(r"<[^>]+>", " ", p))
            text = re.sub(r"\s+", " ", text).strip()
            if text:
                paragraphs.append(text)
        return title, "\n\n".join(paragraphs)

    def extract_facts_with_llm(self, full_text):
        """Blocking: runs on the loop's default executor. No timeout anywhere."""
        body = json.dumps(
            {
                "model": LLM_MODEL,
                "messages": [
                    {"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": full_text},
                ],
                "response_format": {"type": "json_object"},
            }
        ).encode()
        request = urllib.request.Request(
            LLM_BASE_URL.rstrip("/") + "/chat/completions",
            data=body,
            headers={
                "Content-Type": "application/json",
                "Authorization": "Bearer " + os.environ.get("OPENAI_API_KEY", ""),
            },
        )
        with urllib.request.urlopen(request) as response:
            answer = json.loads(response.read())
        return answer["choices"][0]["message"]["content"]

    def save(self, article_id, title, text, result_json):
        cur = self.conn.cursor()
        cur.execute(
            "INSERT INTO digests (article_id, title, text_chars, facts, digested_at) "
            "VALUES (?, ?, ?, ?, strftime('%Y-%m-%dT%H:%M:%SZ', 'now')) "
            "ON CONFLICT (article_id) DO UPDATE SET title = excluded.title, "
            "text_chars = excluded.text_chars, facts = excluded.facts, "
            "digested_at = excluded.digested_at",
            (article_id, title, len(text), result_json),
        )
        cur.execute(
            "UPDATE articles SET processed_at = strftime('%Y-%m-%dT%H:%M:%SZ', 'now') "
            "WHERE id = ?",
            (article_id,),
        )
        self.conn.commit()

    async def process_article(self, article):
        article_id, url, source = article
        loop = asyncio.get_running_loop()
        try:
            logger.info(f"📰 Processing article {article_id} ({source}): {url}")
            # Blocking I/O inside the event loop, as the seed's fetch_url.
            with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT) as response:
                downloaded = response.read().decode("utf-8", errors="replace")
            logger.info(f"⬇️  Downloaded article {article_id}: {len(downloaded)} bytes")
            title, text = self.extract_text(downloaded)
            if not text:
                logger.warning(f"⚠️ No text extracted for article {article_id}")
                self.failed += 1
                return
            full_text = f"Article {article_id}\n\nTitle: {title}\n\n{text}"
            logger.info(f"🤖 Asking the LLM for facts of article {article_id} ({len(text)} chars)")
            result_json = await loop.run_in_executor(
                None, self.extract_facts_with_llm, full_text
            )
            facts = json.loads(result_json)
            self.save(article_id, title, text, result_json)
            self.digested += 1
            logger.info(
                f"✅ Article {article_id} digested: {len(facts.get('facts', []))} facts saved"
            )
        except Exception as e:
            self.failed += 1
            logger.error(f"❌ Article {article_id} failed: {e}")

    async def process_batch(self):
        print(">>>DB_FETCH_START<<<", flush=True)
        logger.info("📋 Fetching unprocessed articles...")
        articles = self.fetch_unprocessed_articles()
        print(">>>DB_FETCH_DONE<<<", flush=True)
        logger.info(f"📋 {len(articles)} articles to process")
        started = time.perf_counter()
        semaphore = asyncio.Semaphore(MAX_CONCURRENT)

        async def bounded(article):
            async with semaphore:
                await self.process_article(article)

        await asyncio.gather(*(bounded(a) for a in articles))
        seconds = time.perf_counter() - started
        logger.info(
            f"🏁 Batch done: {self.digested} digested, {self.failed} failed in {seconds:.1f} s"
        )
        return {
            "taken": len(articles),
            "digested": self.digested,
            "failed": self.failed,
            "seconds": seconds,
        }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("database")
    parser.add_argument("--llm-base-url", required=True)
    parser.add_argument("--model", default="bench")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--fetch-timeout", type=float, default=30.0)
    parser.add_argument("--batch-size", type=int, default=500)
    args = parser.parse_args()
    global BATCH_SIZE, MAX_CONCURRENT, FETCH_TIMEOUT, LLM_BASE_URL, LLM_MODEL
    BATCH_SIZE = args.batch_size
    MAX_CONCURRENT = args.concurrency
    FETCH_TIMEOUT = args.fetch_timeout
    LLM_BASE_URL = args.llm_base_url
    LLM_MODEL = args.model

    logger.info("🚀 Starting digest job")
    engine = DigestEngine(args.database)
    totals = asyncio.run(engine.process_batch())
    print(json.dumps(totals), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
