//! A bench's report: progress on stderr, the table of figures on stdout, and the formatting
//! helpers of both.

/// A table of figures: a header line, the rows and notes in the order they were added, and a
/// closing note of what the columns mean. Printed once at the end, so that a bench that fails
/// midway still shows what it measured.
pub struct Table {
    header: String,
    lines: Vec<String>,
    footnote: String,
}

impl Table {
    /// An empty table under `header`, closed by `footnote`.
    pub fn new(header: String, footnote: &str) -> Table {
        Table {
            header,
            lines: Vec::new(),
            footnote: footnote.to_owned(),
        }
    }

    /// Add a row or a note.
    pub fn line(&mut self, text: impl Into<String>) {
        self.lines.push(text.into());
    }

    /// Print the header, the lines and the closing note to stdout.
    pub fn print(&self) {
        println!("{}", self.header);
        for l in &self.lines {
            println!("{l}");
        }
        println!("{}", self.footnote);
    }
}

/// `1234567.8` → `"1,234,568"`.
pub fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A range of rates, slowest first: `"1,200–1,350"`.
pub fn thousands_range((low, high): (f64, f64)) -> String {
    format!("{}–{}", thousands(low), thousands(high))
}

/// A progress line on stderr, so the report on stdout stays clean.
pub fn progress(message: &str) {
    eprintln!("[bench] {message}");
}

/// The 1-minute load average: the first field of `/proc/loadavg`, or "unknown".
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Say how busy the machine was: the 1-minute load average `before` the bench and now.
pub fn print_load_average(before: &str) {
    println!(
        "load average (1 min) before: {before}, after: {}",
        load_average()
    );
}
