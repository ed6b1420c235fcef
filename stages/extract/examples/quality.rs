//! Runs an extractor over a folder of `<id>.html.gz` pages and writes the `{"id", "text"}`
//! JSONL that the benchmark's scorer reads, with the time spent extracting on stderr.
//!
//!     cargo run --release -p stagewise-stages-extract --example quality -- \
//!         [stage|trafilatura|rs-trafilatura|dom_smoothie] DIR OUT.jsonl [THREADS]
//!
//! `stage` is the stage's own engine; the others are the candidates it was chosen from, each
//! with its defaults, kept so that the choice can be measured again. `THREADS` (default 1)
//! workers share the pages as the stage's pool would; the time is the wall time of the
//! extraction, pages already in memory.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (engine, dir, out, threads) = match args.as_slice() {
        [engine, dir, out] => (engine, dir, out, 1),
        [engine, dir, out, threads] => (engine, dir, out, threads.parse::<usize>()?.max(1)),
        _ => return Err("usage: quality ENGINE DIR OUT.jsonl [THREADS]".into()),
    };
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    paths.retain(|p| p.to_string_lossy().ends_with(".html.gz"));
    paths.sort();
    // Pages are read and decompressed before the clock starts.
    let mut pages = Vec::with_capacity(paths.len());
    for path in &paths {
        let mut html = String::new();
        flate2::read::GzDecoder::new(std::fs::File::open(path)?).read_to_string(&mut html)?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let id = name
            .as_deref()
            .and_then(|n| n.strip_suffix(".html.gz"))
            .unwrap_or_default()
            .to_owned();
        pages.push((id, html));
    }
    // Like the stage's pool: `threads` workers take the next page as they finish one.
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    let results: Vec<(usize, String)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some((_, html)) = pages.get(i) else { break };
                        done.push((i, run(engine, html).unwrap_or_default()));
                    }
                    done
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_default())
            .collect()
    });
    let spent: Duration = started.elapsed();
    let mut texts = vec![String::new(); pages.len()];
    for (i, text) in results {
        texts[i] = text;
    }
    let mut out = std::io::BufWriter::new(std::fs::File::create(out)?);
    let mut empty = 0;
    for ((id, _), text) in pages.iter().zip(&texts) {
        if text.trim().is_empty() {
            empty += 1;
        }
        serde_json::to_writer(&mut out, &serde_json::json!({ "id": id, "text": text }))?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    let n = pages.len().max(1) as f64;
    eprintln!(
        "{engine}: {} pages, {threads} thread(s), {empty} empty, {:.2} ms/page (wall), {:.1} pages/s",
        pages.len(),
        spent.as_secs_f64() * 1000.0 / n,
        n / spent.as_secs_f64()
    );
    Ok(())
}

fn run(engine: &str, html: &str) -> Result<String, Box<dyn std::error::Error>> {
    use stagewise_stages_extract::markdown_to_text;
    Ok(match engine {
        "stage" => stagewise_stages_extract::extract(html)?.text,
        "trafilatura" => trafilatura::extract(html, &trafilatura::Options::default())
            .map(|r| markdown_to_text(&r.content_markdown()))
            .unwrap_or_default(),
        "rs-trafilatura" => rs_trafilatura::extract(html)
            .map(|r| r.content_text)
            .unwrap_or_default(),
        "dom_smoothie" => {
            let config = dom_smoothie::Config {
                text_mode: dom_smoothie::TextMode::Markdown,
                ..Default::default()
            };
            dom_smoothie::Readability::new(html, None, Some(config))
                .and_then(|mut r| r.parse())
                .map(|a| markdown_to_text(&a.text_content))
                .unwrap_or_default()
        }
        other => return Err(format!("unknown engine `{other}`").into()),
    })
}
