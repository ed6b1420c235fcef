//! The live progress on a terminal: a few lines (one per stage, and the run's total) redrawn
//! in place under the log lines, by the log's writer thread only, so a terminal that stopped
//! reading holds nothing but that thread (see [`super::queue`]).

use std::io::Write;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::queue::Screen;

/// The progress lines, drawn with indicatif on standard error.
pub(super) struct Bars {
    multi: MultiProgress,
    lines: Vec<ProgressBar>,
    /// Cleared for good: the run's end is being written.
    ended: bool,
}

impl Bars {
    pub(super) fn new() -> Self {
        Bars {
            // A few redraws a second are enough for figures that change as often.
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4)),
            lines: Vec::new(),
            ended: false,
        }
    }
}

impl Screen for Bars {
    fn write(&mut self, out: &mut dyn Write, line: &[u8]) -> std::io::Result<()> {
        if self.lines.is_empty() {
            return out.write_all(line);
        }
        // Lifted while the line is written, then drawn again under it.
        self.multi
            .suspend(|| out.write_all(line).and_then(|()| out.flush()))
    }

    fn progress(&mut self, lines: Option<Vec<String>>) {
        let Some(lines) = lines.filter(|_| !self.ended) else {
            self.ended = true;
            for line in self.lines.drain(..) {
                line.finish_and_clear();
            }
            let _ = self.multi.clear();
            return;
        };
        // Not padded to the terminal's width: a line that fills it exactly leaves the cursor
        // where a key typed meanwhile (or the `^C` of an interrupt) breaks the redraw.
        let style = ProgressStyle::with_template("{msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        while self.lines.len() < lines.len() {
            let line = self.multi.add(ProgressBar::new_spinner());
            line.set_style(style.clone());
            self.lines.push(line);
        }
        for (bar, text) in self.lines.iter().zip(lines) {
            bar.set_message(text);
        }
    }
}
