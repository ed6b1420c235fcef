//! Runs an extractor over a folder of `<id>.html.gz` pages and writes the `{"id", "text"}`
//! JSONL that the benchmark's scorer reads, with the time spent extracting on stderr.
//!
//!     cargo run --release -p stagewise-stages-extract --example quality -- \
//!         [stage|trafilatura|rs-trafilatura|dom_smoothie] DIR OUT.jsonl
//!
//! `stage` is the stage's own engine; the others are the candidates it was chosen from, each
//! with its defaults, kept so that the choice can be measured again.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [engine, dir, out] = args.as_slice() else {
        return Err("usage: quality ENGINE DIR OUT.jsonl".into());
    };
    let mut pages: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    pages.retain(|p| p.to_string_lossy().ends_with(".html.gz"));
    pages.sort();
    let mut out = std::io::BufWriter::new(std::fs::File::create(out)?);
    let mut spent = Duration::ZERO;
    let mut empty = 0;
    for path in &pages {
        let mut html = String::new();
        flate2::read::GzDecoder::new(std::fs::File::open(path)?).read_to_string(&mut html)?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let id = name
            .as_deref()
            .and_then(|n| n.strip_suffix(".html.gz"))
            .unwrap_or_default();
        let started = Instant::now();
        let text = run(engine, &html)?;
        spent += started.elapsed();
        if text.trim().is_empty() {
            empty += 1;
        }
        serde_json::to_writer(&mut out, &serde_json::json!({ "id": id, "text": text }))?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    let n = pages.len().max(1) as f64;
    eprintln!(
        "{engine}: {} pages, {empty} empty, {:.2} ms/page, {:.1} pages/s",
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
