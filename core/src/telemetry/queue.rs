//! The log queue: every event goes through one bounded queue to one writer thread, so no
//! runtime, pool or signal thread ever waits on standard error. A reader that stopped reading
//! (a stuck log collector, a full pipe) blocks only the writer thread; a reader that went away
//! (`| head`, a dead `tee`) makes writes fail. Either way the run goes on and ends as it would
//! have, and the events that could not be written are counted.
//!
//! When the queue is full, the least important events go first: debug and trace, then info;
//! warnings, errors and the summary are the last to go. Among events of equal rank, a full
//! queue refuses the newcomer, except for the important ones, where the oldest makes room: the
//! summary and the last error say more than the first.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Most events waiting at once.
const MAX_EVENTS: usize = 8192;
/// Most bytes waiting at once.
const MAX_BYTES: usize = 8 << 20;

/// How much an event matters when the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Rank {
    /// Debug and trace.
    Detail = 0,
    /// Info.
    Info = 1,
    /// Warnings, errors, the summary and lines for the user.
    Important = 2,
}

struct Entry {
    rank: Rank,
    line: Vec<u8>,
}

#[derive(Default)]
struct State {
    /// The live progress to show next (`Some(None)`: clear it for good), taken by the writer
    /// before the events: only the latest counts.
    progress: Option<Option<Vec<String>>>,
    events: VecDeque<Entry>,
    bytes: usize,
    /// Events waiting, by rank.
    ranked: [usize; 3],
    /// The writer holds an event it has not finished writing.
    writing: bool,
}

impl State {
    fn full(&self, incoming: usize) -> bool {
        !self.events.is_empty()
            && (self.events.len() >= MAX_EVENTS || self.bytes + incoming > MAX_BYTES)
    }

    fn remove(&mut self, at: usize) {
        if let Some(e) = self.events.remove(at) {
            self.bytes -= e.line.len();
            self.ranked[e.rank as usize] -= 1;
        }
    }

    /// Make room for an event of `rank` by dropping the oldest of a lower rank (or, for an
    /// important one, the oldest important one); false if the newcomer must go instead.
    fn evict_for(&mut self, rank: Rank) -> bool {
        let lowest = [Rank::Detail, Rank::Info]
            .into_iter()
            .find(|r| *r < rank && self.ranked[*r as usize] > 0)
            .or((rank == Rank::Important).then_some(Rank::Important));
        let Some(victim) = lowest else {
            return false;
        };
        match self.events.iter().position(|e| e.rank == victim) {
            Some(at) => {
                self.remove(at);
                true
            }
            None => false,
        }
    }
}

/// The queue and its counters; one per process, drained by [`LogQueue::drain_forever`].
pub(crate) struct LogQueue {
    state: Mutex<State>,
    /// Signalled when an event arrives.
    arrived: Condvar,
    /// Signalled when the queue is empty and nothing is being written.
    idle: Condvar,
    dropped: AtomicU64,
}

impl LogQueue {
    pub(crate) fn new() -> Self {
        LogQueue {
            state: Mutex::new(State::default()),
            arrived: Condvar::new(),
            idle: Condvar::new(),
            dropped: AtomicU64::new(0),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queue one event (a whole line); never waits for the writer.
    pub(crate) fn push(&self, rank: Rank, line: Vec<u8>) {
        let mut s = self.state();
        while s.full(line.len()) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            if !s.evict_for(rank) {
                return;
            }
        }
        s.bytes += line.len();
        s.ranked[rank as usize] += 1;
        s.events.push_back(Entry { rank, line });
        drop(s);
        self.arrived.notify_one();
    }

    /// Show `lines` as the live progress (see [`Screen`]), replacing what was not shown yet;
    /// `None` clears it for good. Never waits for the writer.
    pub(crate) fn progress(&self, lines: Option<Vec<String>>) {
        self.state().progress = Some(lines);
        self.arrived.notify_one();
    }

    /// Events dropped so far: refused or evicted by a full queue, or not written (the reader
    /// gone, or standard error closed).
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Events queued and not yet written.
    pub(crate) fn pending(&self) -> u64 {
        let s = self.state();
        s.events.len() as u64 + u64::from(s.writing)
    }

    /// Wait until every queued event is written (or failed), or `within` has passed; true if
    /// the queue is empty.
    pub(crate) fn flush(&self, within: Duration) -> bool {
        let until = Instant::now() + within;
        let mut s = self.state();
        while !s.events.is_empty() || s.writing {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            s = self
                .idle
                .wait_timeout(s, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }

    /// The writer thread's loop: write each event to `out` with one `write_all`, in order,
    /// through `screen`, which also shows the live progress.
    pub(crate) fn drain_forever(&self, out: &mut dyn Write, screen: &mut dyn Screen) -> ! {
        loop {
            let entry = {
                let mut s = self.state();
                loop {
                    if let Some(progress) = s.progress.take() {
                        s.writing = true;
                        drop(s);
                        screen.progress(progress);
                        s = self.state();
                        continue;
                    }
                    if let Some(e) = s.events.pop_front() {
                        s.bytes -= e.line.len();
                        s.ranked[e.rank as usize] -= 1;
                        s.writing = true;
                        break e;
                    }
                    s.writing = false;
                    self.idle.notify_all();
                    s = self.arrived.wait(s).unwrap_or_else(PoisonError::into_inner);
                }
            };
            // A short or failed write loses the event; it is never retried (the reader may be
            // gone for good), and never ends the process.
            if screen.write(out, &entry.line).is_err() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Where the writer thread's lines go: straight to standard error, or around the live
/// progress shown on a terminal.
pub(crate) trait Screen {
    /// Write one whole event.
    fn write(&mut self, out: &mut dyn Write, line: &[u8]) -> std::io::Result<()>;
    /// Show `lines` as the live progress, or clear it for good (`None`).
    fn progress(&mut self, lines: Option<Vec<String>>);
}

/// Lines only, no progress.
pub(crate) struct Plain;

impl Screen for Plain {
    fn write(&mut self, out: &mut dyn Write, line: &[u8]) -> std::io::Result<()> {
        out.write_all(line)
    }

    fn progress(&mut self, _: Option<Vec<String>>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(n: usize) -> Vec<u8> {
        format!("event {n}\n").into_bytes()
    }

    fn ranks(q: &LogQueue) -> Vec<Rank> {
        q.state().events.iter().map(|e| e.rank).collect()
    }

    #[test]
    fn a_full_queue_drops_detail_first_then_info_and_keeps_what_matters() {
        let q = LogQueue::new();
        for n in 0..MAX_EVENTS {
            let rank = if n % 2 == 0 { Rank::Detail } else { Rank::Info };
            q.push(rank, line(n));
        }
        assert_eq!(q.dropped(), 0);
        // A debug event finds no room: it is the one dropped.
        q.push(Rank::Detail, line(0));
        assert_eq!(q.dropped(), 1);
        // Warnings push out debug events, oldest first, then info events.
        for n in 0..MAX_EVENTS {
            q.push(Rank::Important, line(n));
        }
        assert_eq!(q.dropped(), 1 + MAX_EVENTS as u64);
        let kept = ranks(&q);
        assert_eq!(kept.len(), MAX_EVENTS);
        assert!(kept.iter().all(|r| *r == Rank::Important), "{kept:?}");
        // A full queue of important events: an info event is refused, a warning replaces the
        // oldest warning, and the newest is kept.
        q.push(Rank::Info, b"late info\n".to_vec());
        q.push(Rank::Important, b"the summary\n".to_vec());
        let s = q.state();
        assert_eq!(s.events.len(), MAX_EVENTS);
        assert_eq!(
            s.events.back().map(|e| e.line.as_slice()),
            Some(&b"the summary\n"[..])
        );
        assert_eq!(s.events.front().map(|e| e.line.clone()), Some(line(1)));
        assert_eq!(s.ranked, [0, 0, MAX_EVENTS]);
    }

    #[test]
    fn the_byte_bound_holds_too() {
        let q = LogQueue::new();
        let big = vec![b'x'; MAX_BYTES / 4];
        for _ in 0..4 {
            q.push(Rank::Info, big.clone());
        }
        assert_eq!(q.dropped(), 0);
        q.push(Rank::Info, b"one byte too many\n".to_vec());
        assert_eq!(q.dropped(), 1);
        q.push(Rank::Important, b"warning\n".to_vec());
        assert_eq!(q.dropped(), 2);
        let s = q.state();
        assert!(s.bytes <= MAX_BYTES, "{}", s.bytes);
        assert_eq!(s.events.len(), 4);
        assert_eq!(s.ranked, [0, 3, 1]);
    }

    /// A writer whose every write fails, like stderr after the reader exited.
    struct Gone;
    impl Write for Gone {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn failed_writes_are_counted_and_flush_waits_for_the_writer() {
        let q = std::sync::Arc::new(LogQueue::new());
        for n in 0..10 {
            q.push(Rank::Info, line(n));
        }
        let writer = q.clone();
        std::thread::spawn(move || writer.drain_forever(&mut Gone, &mut Plain));
        assert!(q.flush(Duration::from_secs(10)));
        assert_eq!(q.dropped(), 10);
    }

    /// A writer that never returns, like a pipe nobody reads.
    struct Stuck;
    impl Write for Stuck {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            loop {
                std::thread::park();
            }
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_reader_never_blocks_the_producers_and_flush_gives_up_in_time() {
        let q = std::sync::Arc::new(LogQueue::new());
        let writer = q.clone();
        std::thread::spawn(move || writer.drain_forever(&mut Stuck, &mut Plain));
        let began = Instant::now();
        for n in 0..(3 * MAX_EVENTS) {
            q.push(Rank::Detail, line(n));
        }
        assert!(!q.flush(Duration::from_millis(100)));
        assert!(began.elapsed() < Duration::from_secs(30));
        // Every event is either dropped or waiting (one of them in the stuck write).
        assert_eq!(q.dropped() + q.pending(), (3 * MAX_EVENTS) as u64);
        assert!(
            q.dropped() >= (2 * MAX_EVENTS - 1) as u64,
            "{}",
            q.dropped()
        );
    }
}
