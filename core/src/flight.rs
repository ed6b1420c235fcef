//! The flight recorder: what a running process is doing, kept in a small fixed-size file, so
//! that after a `kill -9`, a watchdog ending a frozen process or an OOM kill, the next process
//! (or `stagewise status`) can say what the dead one was doing.
//!
//! The file is written through a shared memory map: every write is a plain memory copy (no
//! system call, never blocked by a full log pipe), and the kernel's page cache keeps it when the
//! process dies however it dies. Nothing is synced to disk: the record is for the next process
//! on this machine, not for surviving a power cut.
//!
//! Layout (little-endian, fixed for a format version; sizes in [`FILE_SIZE`]):
//!
//! - a header: magic bytes, the format version, the geometry of the ring and the table (so a
//!   reader refuses a file laid out otherwise), pid, run id, timestamps (unix milliseconds),
//!   the ended flag, the ring's next sequence number, `in_flight_more`, and text slots for the
//!   host, the pipeline and the `ending` message;
//! - a ring of the last [`EVENTS`] log lines;
//! - a table of [`IN_FLIGHT`] attempt slots.
//!
//! Every variable-length slot carries its length and a checksum of its contents (computed on
//! 8-byte words), and is written as invalidate → contents → checksum → commit, so a copy cut short by `kill -9` (or
//! seen half-done by a reader while the writer runs) fails its checksum and is skipped. Ring
//! slots carry their own sequence number: the order of the events does not depend on a ring
//! index that could itself be torn.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use memmap2::{MmapMut, MmapOptions};

/// How many log events the ring keeps (the last ones).
pub const EVENTS: usize = 200;
/// How many attempts the in-flight table holds; more are only counted (`in_flight_more`).
pub const IN_FLIGHT: usize = 1024;

/// The format version: bumped whenever the layout changes.
const VERSION: u32 = 2;
const MAGIC: [u8; 16] = *b"stagewise flight";

const HEADER_SIZE: usize = 8192;
const EVENT_SLOT: usize = 512;
const ATTEMPT_SLOT: usize = 384;
const RING_AT: usize = HEADER_SIZE;
const TABLE_AT: usize = RING_AT + EVENTS * EVENT_SLOT;
/// The size of every recorder file, in bytes.
pub const FILE_SIZE: usize = TABLE_AT + IN_FLIGHT * ATTEMPT_SLOT;

// Header fields: offsets of fixed-size values (u64s 8-aligned).
const H_MAGIC: usize = 0;
const H_VERSION: usize = 16;
const H_HEADER_SIZE: usize = 20;
const H_EVENTS: usize = 24;
const H_EVENT_SLOT: usize = 28;
const H_IN_FLIGHT: usize = 32;
const H_ATTEMPT_SLOT: usize = 36;
const H_PID: usize = 40;
const H_HAS_RUN: usize = 44;
const H_RUN: usize = 48;
const H_STARTED: usize = 56;
const H_LAST_EVENT: usize = 64;
const H_LAST_SEEN: usize = 72;
const H_ENDED: usize = 80;
const H_NEXT_SEQ: usize = 88;
const H_MORE: usize = 96;
// Header text slots: `[u32 len][u32 checksum][bytes]`, at these offsets with these capacities.
const H_HOST: (usize, usize) = (128, 248);
const H_PIPELINE: (usize, usize) = (384, 248);
const H_ENDING: (usize, usize) = (640, 1016);
/// Added after version 2 in what was spare room: a reader of a file without it reads no text.
const H_BREAKERS: (usize, usize) = (1664, 376);
const H_PREVIOUS: (usize, usize) = (2048, 6136);

// An event slot: `[u64 seq][u32 len][u32 checksum][text]`; seq 0 = empty or being written.
const EVENT_TEXT: usize = EVENT_SLOT - 16;
// An attempt slot: `[u64 tag][u64 started ms][u32 attempt][u32 stage len][u32 key len]
// [u32 checksum][stage: 64 bytes][key: 288 bytes]`; tag 0 = free or being written, else the
// order of `begin` calls (the start millisecond, then the order within the thread).
const A_STAGE: usize = 32;
/// Most bytes of a stage name kept.
const STAGE_MAX: usize = 64;
const A_KEY: usize = A_STAGE + STAGE_MAX;
/// Most bytes of a key kept.
const KEY_MAX: usize = ATTEMPT_SLOT - A_KEY;

/// The last millisecond RFC 3339 can write (year 9999): a damaged timestamp is clamped to it.
const MAX_MS: u64 = 253_402_300_799_999;

const _: () = assert!(H_ENDING.0 + 8 + H_ENDING.1 <= H_BREAKERS.0);
const _: () = assert!(H_BREAKERS.0 + 8 + H_BREAKERS.1 <= H_PREVIOUS.0);
const _: () = assert!(H_PREVIOUS.0 + 8 + H_PREVIOUS.1 <= HEADER_SIZE);
const _: () = assert!(FILE_SIZE < 1 << 20);

/// What a process was doing, as the recorder kept it. Also the JSON form that `status --json`
/// prints as `previous_process` and the PostgreSQL store keeps a copy of.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProcessRecord {
    /// The process id.
    pub pid: u32,
    /// The machine's host name ("" if unknown).
    pub host: String,
    /// The pipeline the process ran.
    pub pipeline: String,
    /// The run id, once known.
    pub run: Option<i64>,
    /// When the process started (RFC 3339, milliseconds, UTC).
    pub started_at: String,
    /// When the last log event was recorded.
    pub last_event_at: Option<String>,
    /// The last sign of life: the runtime's liveness tick, a log event, or the end.
    pub last_seen_at: String,
    /// The process ended normally (it wrote its summary).
    pub ended: bool,
    /// Why the process ended abnormally, when it could say (e.g. the watchdog's message).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ending: Option<String>,
    /// The circuit breakers holding attempts back, as the process last said (`None`: none).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub breakers: Option<String>,
    /// What this process reported, when it started, about the process before it that had
    /// ended without a summary (kept apart from the log events, so no log filter or later
    /// line loses it).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub previous_report: Option<String>,
    /// The attempts in flight, in the order they began.
    pub in_flight: Vec<InFlightAttempt>,
    /// Attempts in flight that did not fit in the table.
    #[serde(skip_serializing_if = "is_zero", default)]
    pub in_flight_more: u64,
    /// The last log events (at most [`EVENTS`]), oldest first, ANSI colours removed.
    pub last_events: Vec<String>,
}

/// An attempt that was in flight.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct InFlightAttempt {
    /// The item's key, as given (possibly truncated on a character boundary; not escaped).
    pub key: String,
    /// The stage's name.
    pub stage: String,
    /// The attempt number.
    pub attempt: u32,
    /// When the attempt began (RFC 3339, milliseconds, UTC).
    pub started_at: String,
    /// Seconds from `started_at` to the record's `last_seen_at` (0 if it began after), to the
    /// millisecond.
    pub age_secs: f64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What can go wrong creating or reading a recorder file.
#[derive(Debug, thiserror::Error)]
pub enum FlightError {
    /// The file could not be created, opened, sized, mapped or read.
    #[error("flight recorder {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The file does not start like a recorder file.
    #[error("{} is not a flight recorder file", path.display())]
    NotARecorder {
        /// The file.
        path: PathBuf,
    },
    /// The file was written by a build with another format version.
    #[error("flight recorder {} has format version {found}, this build reads version {supported}", path.display())]
    Version {
        /// The file.
        path: PathBuf,
        /// Its format version.
        found: u32,
        /// The one this build reads.
        supported: u32,
    },
    /// The file is not of the size every recorder file has: truncated, or damaged.
    #[error("flight recorder {} is {found} bytes, not {expected}: truncated or damaged", path.display())]
    Size {
        /// The file.
        path: PathBuf,
        /// Its size.
        found: u64,
        /// The size of a recorder file.
        expected: u64,
    },
    /// The file is damaged in another way.
    #[error("flight recorder {}: {message}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// The writer of a recorder file. All methods take `&self` and may be called from any thread.
/// Every slot is written by one thread at a time — an attempt slot by the attempt that took it
/// from the table's bitmap, without a lock (this is on every attempt's path); event and text
/// slots under one small lock (a log line costs far more than the lock) — and every access to
/// the map is an atomic load or store of an aligned 8-byte word, so a reader in this process
/// (`snapshot`) and the writers never race.
pub struct Recorder {
    path: PathBuf,
    /// The temporary name the file was made under, until [`Recorder::place`] renames it.
    temporary: Mutex<Option<PathBuf>>,
    /// Owns the mapping that `words` points into; never accessed otherwise.
    _map: MmapMut,
    /// The map as [`WORDS`] atomic words.
    words: NonNull<AtomicU64>,
    /// When the recorder started, on the monotonic clock and in unix milliseconds.
    anchor: (std::time::Instant, u64),
    /// One bit per attempt slot: set while the slot is taken.
    taken: [AtomicU64; IN_FLIGHT / 64],
    /// The sequence number of the last event written (0: none yet); held while an event or
    /// header text slot is written, so that two writers never write one slot at once.
    seq: Mutex<u64>,
}

/// The map's size in 8-byte words.
const WORDS: usize = FILE_SIZE / 8;

const _: () = assert!(FILE_SIZE.is_multiple_of(8) && IN_FLIGHT.is_multiple_of(64));
const _: () = assert!(ATTEMPT_SLOT.is_multiple_of(8) && EVENT_SLOT.is_multiple_of(8));
const _: () = assert!(HEADER_SIZE.is_multiple_of(8) && RING_AT.is_multiple_of(8));
const _: () = assert!(H_ENDING.0.is_multiple_of(8) && (H_ENDING.1 + 8).is_multiple_of(8));
const _: () = assert!(H_PREVIOUS.0.is_multiple_of(8) && (H_PREVIOUS.1 + 8).is_multiple_of(8));
const _: () = assert!(H_BREAKERS.0.is_multiple_of(8) && (H_BREAKERS.1 + 8).is_multiple_of(8));

// SAFETY: `words` points into `_map`, which the recorder owns and never moves or unmaps before
// it is dropped; the map is only ever accessed through atomic words, which any thread may use.
#[allow(unsafe_code)]
unsafe impl Send for Recorder {}
// SAFETY: as above: every access through `&self` is atomic.
#[allow(unsafe_code)]
unsafe impl Sync for Recorder {}

impl fmt::Debug for Recorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recorder")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Recorder {
    /// Create (or replace) the file at `path`, mode 0600, and map it: [`Recorder::prepare`] then
    /// [`Recorder::place`]. A previous process's record is lost: [`Recorder::read`] it first.
    pub fn create(path: &Path, pipeline: &str) -> Result<Recorder, FlightError> {
        let recorder = Recorder::prepare(path, pipeline)?;
        recorder.place()?;
        Ok(recorder)
    }

    /// Make this process's file under a temporary name beside `path` (mode 0600, creating the
    /// parent folder) and map it; the file at `path` is untouched until [`Recorder::place`].
    /// What is recorded in between (the report on the previous process, say) is in the file
    /// when it takes the old one's place: a process killed in between leaves the old record.
    ///
    /// The whole file is written once here, so that a full disk is an error now rather than a
    /// `SIGBUS` on a later write through the map (on file systems that do not copy on write).
    /// Temporary files that killed processes left beside `path` are removed. The caller must
    /// keep other processes from preparing the same path meanwhile (the runner does, by holding
    /// the checkpoint store's lock).
    pub fn prepare(path: &Path, pipeline: &str) -> Result<Recorder, FlightError> {
        let io_err = |source| FlightError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(parent) = path.parent() {
            crate::state_file::create_dir(parent).map_err(io_err)?;
        }
        remove_temporaries(path);
        // A new file of our own, later renamed over whatever is at `path`: whatever that is (a
        // symlink to someone else's file, a FIFO, a file of wider permissions) is replaced, never
        // written through or waited on. `create_new` refuses to follow a symlink planted at the
        // temporary name too.
        let temporary = temporary_name(path, std::process::id());
        let io_err = |source| FlightError::Io {
            path: temporary.clone(),
            source,
        };
        let _ = std::fs::remove_file(&temporary);
        let mut file = crate::state_file::open(
            &temporary,
            crate::state_file::options()
                .read(true)
                .write(true)
                .create_new(true),
        )
        .map_err(io_err)?;
        let mapped = file
            .write_all(&image(pipeline, now_ms()))
            .and_then(|()| map(&file));
        match mapped {
            Ok(map) => Ok(Recorder::with_map(path.to_owned(), Some(temporary), map)),
            Err(e) => {
                let _ = std::fs::remove_file(&temporary);
                Err(io_err(e))
            }
        }
    }

    /// Put the prepared file in place of whatever is at the path (a no-op once placed, and for
    /// a recorder in memory). On failure the temporary file is removed and the recorder goes on
    /// in memory.
    pub fn place(&self) -> Result<(), FlightError> {
        let temporary = self
            .temporary
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(temporary) = temporary else {
            return Ok(());
        };
        std::fs::rename(&temporary, &self.path).map_err(|source| {
            let _ = std::fs::remove_file(&temporary);
            FlightError::Io {
                path: self.path.clone(),
                source,
            }
        })
    }

    /// A recorder without a file, when none can be created: the watchdog still reads its table
    /// of attempts in flight, and the checkpoint store still gets its copies.
    pub fn in_memory(pipeline: &str) -> io::Result<Recorder> {
        let mut map = MmapMut::map_anon(FILE_SIZE)?;
        map.copy_from_slice(&image(pipeline, now_ms()));
        Ok(Recorder::with_map(PathBuf::new(), None, map))
    }

    fn with_map(path: PathBuf, temporary: Option<PathBuf>, mut map: MmapMut) -> Recorder {
        assert_eq!(map.len(), FILE_SIZE, "a recorder maps a whole file");
        let base = map.as_mut_ptr();
        assert!(
            base.align_offset(std::mem::align_of::<AtomicU64>()) == 0,
            "a map starts on a page"
        );
        let words = NonNull::new(base.cast::<AtomicU64>()).expect("a map is never at null");
        Recorder {
            path,
            temporary: Mutex::new(temporary),
            _map: map,
            words,
            anchor: (std::time::Instant::now(), now_ms()),
            taken: std::array::from_fn(|_| AtomicU64::new(0)),
            seq: Mutex::new(0),
        }
    }

    /// Read whatever record is at `path`: `Ok(None)` if there is no file. Works while another
    /// process writes the file (a best-effort copy: slots being written are skipped).
    ///
    /// A file that is not a recorder file, of another format version, truncated or otherwise
    /// damaged is an error naming the path; at most [`FILE_SIZE`] + 1 bytes are read. Slots
    /// whose checksum fails (a write cut short) are skipped.
    pub fn read(path: &Path) -> Result<Option<ProcessRecord>, FlightError> {
        let io_err = |source| FlightError::Io {
            path: path.to_owned(),
            source,
        };
        // Checked before opening: opening a FIFO for reading would block. A link is not
        // followed: it is not a file of ours.
        let meta = match std::fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(e)),
        };
        if !meta.is_file() {
            return Err(FlightError::Corrupt {
                path: path.to_owned(),
                message: "not a regular file".to_owned(),
            });
        }
        let file = match crate::state_file::open(path, crate::state_file::options().read(true)) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(e)),
        };
        let mut bytes = Vec::with_capacity(FILE_SIZE + 1);
        file.take(FILE_SIZE as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(io_err)?;
        check(&bytes, meta.len(), path)?;
        Ok(Some(decode(&bytes)))
    }

    /// The file written (once placed).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The run id, once known.
    pub fn set_run(&self, run: i64) {
        // `has_run` shares its word with the pid, which never changes.
        let pid = u64::from(std::process::id());
        self.store(H_PID, pid);
        self.store(H_RUN, run as u64);
        self.store(H_PID, pid | 1 << 32);
    }

    /// One log line, as formatted for stderr. ANSI CSI sequences (`ESC [ … final byte`) and
    /// the trailing newline are removed, the rest is kept as is, cut on a character boundary to
    /// the slot's size (invalid UTF-8 is replaced when read). Goes into the ring of the last
    /// [`EVENTS`] events; sets `last_event_at` and `last_seen_at`.
    pub fn event(&self, line: &[u8]) {
        let mut slot = [0u8; EVENT_SLOT];
        let len = clean_line(line, &mut slot[16..16 + EVENT_TEXT]);
        let now = now_ms();
        let mut last = self.lock_slots();
        *last += 1;
        let seq = *last;
        put_u64(&mut slot, 0, seq);
        put_u32(&mut slot, 8, len as u32);
        let sum = event_sum(seq, len as u32, &slot[16..16 + len]);
        put_u32(&mut slot, 12, sum);
        let at = RING_AT + ((seq - 1) % EVENTS as u64) as usize * EVENT_SLOT;
        self.commit(at, &slot[..16 + len]);
        drop(last);
        self.word(H_NEXT_SEQ).fetch_max(seq + 1, Ordering::Relaxed);
        self.word(H_LAST_EVENT).fetch_max(now, Ordering::Relaxed);
        self.seen(now);
    }

    /// An attempt began: it takes a slot of the in-flight table until the returned guard is
    /// dropped. When the table is full, the attempt is only counted in `in_flight_more`.
    ///
    /// The key and the stage are stored as they are, cut on a character boundary to fit
    /// (the stage to 64 bytes, the key to 288).
    pub fn begin(&self, key: &str, stage: &str, attempt: u32) -> AttemptSlot<'_> {
        self.begin_at(key, stage, attempt, std::time::Instant::now())
    }

    /// [`Recorder::begin`] for an attempt that began at `began` (a reading of the monotonic
    /// clock the caller already made: the wall time is the recorder's start plus the time
    /// since, so a wall clock stepped since does not show in it).
    pub fn begin_at(
        &self,
        key: &str,
        stage: &str,
        attempt: u32,
        began: std::time::Instant,
    ) -> AttemptSlot<'_> {
        let Some(index) = self.take_slot(LOCAL.with(|l| l.first_word)) else {
            self.word(H_MORE).fetch_add(1, Ordering::Relaxed);
            return AttemptSlot {
                recorder: self,
                index: None,
            };
        };
        let stage = truncate(stage, STAGE_MAX).as_bytes();
        let key = truncate(key, KEY_MAX).as_bytes();
        let since = began.saturating_duration_since(self.anchor.0);
        let now = self.anchor.1 + since.as_secs() * 1000 + u64::from(since.subsec_millis());
        let tag = (now << 20 | LOCAL.with(Local::count) & 0xf_ffff).max(1);
        let lens = u64::from(attempt) | (stage.len() as u64) << 32;
        // Written word by word as the checksum goes: this is on every attempt's path.
        let at = (TABLE_AT + index * ATTEMPT_SLOT) / 8;
        let words = &self.words()[at..at + ATTEMPT_SLOT / 8];
        words[0].store(0, Ordering::Release);
        fence(Ordering::Release);
        words[1].store(now, Ordering::Relaxed);
        words[2].store(lens, Ordering::Relaxed);
        let mut sum = Sum::new()
            .word(tag)
            .word(now)
            .word(lens)
            .word(key.len() as u64);
        for (text, first) in [(stage, A_STAGE / 8), (key, A_KEY / 8)] {
            let whole = text.chunks_exact(8);
            let rest = whole.remainder();
            let mut i = first;
            for chunk in whole {
                let word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
                sum = sum.word(word);
                words[i].store(word, Ordering::Relaxed);
                i += 1;
            }
            if !rest.is_empty() {
                let word = le_word(rest);
                sum = sum.word(word);
                words[i].store(word, Ordering::Relaxed);
            }
        }
        words[3].store(
            key.len() as u64 | u64::from(sum.finish()) << 32,
            Ordering::Relaxed,
        );
        words[0].store(tag, Ordering::Release);
        // Starting an attempt is a sign of life: its age is never negative.
        self.seen(now);
        AttemptSlot {
            recorder: self,
            index: Some(index),
        }
    }

    /// The liveness tick: sets `last_seen_at`. An 8-byte store.
    pub fn touch(&self) {
        self.seen(now_ms());
    }

    /// The process is ending abnormally, and this is why (kept in `ending`, cut to 1016 bytes
    /// on a character boundary; an empty message is no message). Sets `last_seen_at`.
    pub fn set_ending(&self, why: &str) {
        self.set_text(H_ENDING, why);
        self.seen(now_ms());
    }

    /// The circuit breakers that hold attempts back now, said in a line (cut to 376 bytes on a
    /// character boundary); empty: none.
    pub fn set_breakers(&self, open: &str) {
        self.set_text(H_BREAKERS, open);
    }

    /// What this process reported about the process before it (kept in `previous_report`,
    /// cut to 6136 bytes on a character boundary).
    pub fn set_previous_report(&self, report: &str) {
        self.set_text(H_PREVIOUS, report);
    }

    fn set_text(&self, (at, cap): (usize, usize), text: &str) {
        let mut slot = vec![0u8; cap + 8];
        write_text(&mut slot, (0, cap), text);
        let len = get_u32(&slot, 0) as usize;
        let _one_writer = self.lock_slots();
        self.commit(at, &slot[..8 + len]);
    }

    /// The process ended normally. Sets `last_seen_at`.
    pub fn mark_ended(&self) {
        self.store(H_ENDED, 1);
        self.seen(now_ms());
    }

    /// The record as it is now: what [`Recorder::read`] would return.
    pub fn snapshot(&self) -> ProcessRecord {
        let mut bytes = vec![0u8; FILE_SIZE];
        for (chunk, word) in bytes.chunks_exact_mut(8).zip(self.words()) {
            chunk.copy_from_slice(&word.load(Ordering::Acquire).to_le_bytes());
        }
        decode(&bytes)
    }

    fn lock_slots(&self) -> std::sync::MutexGuard<'_, u64> {
        // Nothing a panicking writer leaves half done is worse than a torn slot, which readers
        // skip.
        self.seq.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn words(&self) -> &[AtomicU64] {
        // SAFETY: `words` is the start of the map, aligned (checked in `with_map`), valid for
        // FILE_SIZE bytes (the map's length, checked there) for as long as `self` owns the map;
        // every access to those bytes after `with_map` goes through these atomics.
        #[allow(unsafe_code)]
        unsafe {
            std::slice::from_raw_parts(self.words.as_ptr(), WORDS)
        }
    }

    fn word(&self, at: usize) -> &AtomicU64 {
        &self.words()[at / 8]
    }

    fn store(&self, at: usize, value: u64) {
        self.word(at).store(value, Ordering::Release);
    }

    /// Writes a slot whose first 8 bytes say whether it is whole (an event's sequence number,
    /// an attempt's tag, a text's length and checksum): first those cleared, then the rest, then
    /// those. `bytes` is the slot's used part; the rest of the slot is left as it was (its
    /// lengths say where it ends).
    fn commit(&self, at: usize, bytes: &[u8]) {
        debug_assert!(at.is_multiple_of(8));
        let words = &self.words()[at / 8..];
        words[0].store(0, Ordering::Release);
        fence(Ordering::Release);
        let mut padded = [0u8; 8];
        for (i, chunk) in bytes.chunks(8).enumerate().skip(1) {
            padded[..chunk.len()].copy_from_slice(chunk);
            padded[chunk.len()..].fill(0);
            words[i].store(u64::from_le_bytes(padded), Ordering::Relaxed);
        }
        words[0].store(get_u64(bytes, 0), Ordering::Release);
    }

    fn seen(&self, now: u64) {
        // The wall clock may step back; `last_seen_at` does not. Most calls fall in the same
        // millisecond as the last: a load, no write.
        let word = self.word(H_LAST_SEEN);
        if now > word.load(Ordering::Relaxed) {
            word.fetch_max(now, Ordering::Relaxed);
        }
    }

    /// A free attempt slot, marked taken, looking from the bitmap's word `first` on; `None`
    /// when all are taken.
    fn take_slot(&self, first: usize) -> Option<usize> {
        let words = self.taken.len();
        for w in (first..first + words).map(|w| w % words) {
            let word = &self.taken[w];
            let mut bits = word.load(Ordering::Relaxed);
            while bits != u64::MAX {
                let bit = (!bits).trailing_zeros();
                let before = word.fetch_or(1 << bit, Ordering::Acquire);
                if before & 1 << bit == 0 {
                    return Some(w * 64 + bit as usize);
                }
                bits = before | 1 << bit;
            }
        }
        None
    }
}

/// What each thread keeps for the attempts it begins, so that threads do not write the same
/// memory on every attempt (on 2 cores, moving a cache line between them costs more than all
/// the rest of recording an attempt): where in the bitmap it looks for a free slot first, and
/// its count of attempts begun, which orders its attempts within a millisecond.
struct Local {
    first_word: usize,
    count: std::cell::Cell<u64>,
}

impl Local {
    fn count(&self) -> u64 {
        let n = self.count.get() + 1;
        self.count.set(n);
        n
    }
}

thread_local! {
    static LOCAL: Local = Local {
        first_word: THREADS.fetch_add(1, Ordering::Relaxed) % (IN_FLIGHT / 64),
        count: std::cell::Cell::new(0),
    };
}

/// Threads that have begun attempts: each starts in its own word of the bitmap.
static THREADS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The temporary name a process with this pid prepares `path` under.
fn temporary_name(path: &Path, pid: u32) -> PathBuf {
    let mut name = temporary_prefix(path);
    name.push(pid.to_string());
    path.with_file_name(name)
}

/// The start of the temporary names processes prepare `path` under, before their pid: the
/// file's name and `.new-`, or, where that could pass the 255 bytes a file name may have, a
/// hash of the name in its place.
fn temporary_prefix(path: &Path) -> std::ffi::OsString {
    let name = path.file_name().unwrap_or_default();
    let mut prefix = name.to_owned();
    prefix.push(".new-");
    // A pid has at most 10 digits.
    if prefix.len() + 10 <= 255 {
        return prefix;
    }
    let hash = Sum::new().text(name.as_encoded_bytes()).0;
    format!(".{hash:016x}.flight.new-").into()
}

/// Removes the temporary files that processes killed while preparing `path` left beside it.
fn remove_temporaries(path: &Path) {
    let Some(folder) = path.parent() else {
        return;
    };
    let folder = if folder.as_os_str().is_empty() {
        Path::new(".")
    } else {
        folder
    };
    let Ok(entries) = std::fs::read_dir(folder) else {
        return;
    };
    let prefix = temporary_prefix(path);
    let prefix = prefix.as_encoded_bytes();
    for entry in entries.flatten() {
        let entry_name = entry.file_name();
        let Some(pid) = entry_name.as_encoded_bytes().strip_prefix(prefix) else {
            continue;
        };
        if !pid.is_empty() && pid.iter().all(u8::is_ascii_digit) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// An attempt's place in the in-flight table (or in `in_flight_more`), freed when dropped.
#[must_use = "the attempt leaves the in-flight table when this is dropped"]
pub struct AttemptSlot<'a> {
    recorder: &'a Recorder,
    /// The slot's index; `None` when the table was full.
    index: Option<usize>,
}

impl fmt::Debug for AttemptSlot<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttemptSlot")
            .field("slot", &self.index)
            .finish_non_exhaustive()
    }
}

impl Drop for AttemptSlot<'_> {
    fn drop(&mut self) {
        let rec = self.recorder;
        match self.index {
            Some(index) => {
                // The slot is cleared before it is freed: its next owner writes after this.
                rec.store(TABLE_AT + index * ATTEMPT_SLOT, 0);
                rec.taken[index / 64].fetch_and(!(1 << (index % 64)), Ordering::Release);
            }
            None => {
                rec.word(H_MORE).fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

/// A new file's bytes: the header of this process and empty slots.
fn image(pipeline: &str, now: u64) -> Vec<u8> {
    let mut image = vec![0u8; FILE_SIZE];
    image[H_MAGIC..H_MAGIC + MAGIC.len()].copy_from_slice(&MAGIC);
    for (at, value) in [
        (H_VERSION, VERSION),
        (H_HEADER_SIZE, HEADER_SIZE as u32),
        (H_EVENTS, EVENTS as u32),
        (H_EVENT_SLOT, EVENT_SLOT as u32),
        (H_IN_FLIGHT, IN_FLIGHT as u32),
        (H_ATTEMPT_SLOT, ATTEMPT_SLOT as u32),
        (H_PID, std::process::id()),
    ] {
        put_u32(&mut image, at, value);
    }
    put_u64(&mut image, H_STARTED, now);
    put_u64(&mut image, H_LAST_SEEN, now);
    write_text(&mut image, H_HOST, &hostname());
    write_text(&mut image, H_PIPELINE, pipeline);
    image
}

/// Maps the recorder's file for writing.
#[allow(unsafe_code)]
fn map(file: &File) -> io::Result<MmapMut> {
    // SAFETY: memmap2 requires that nothing else modifies or truncates the file while it is
    // mapped. The file is ours: just created by this process under a name of its own, mode
    // 0600, and sized above. Other processes only read it, with `read(2)`, and a process
    // that prepares the same path makes a new file and renames it over this one (this one's
    // inode, still mapped, is unlinked, not truncated). Our own writes are atomic word stores
    // (see `Recorder::words`).
    unsafe { MmapOptions::new().len(FILE_SIZE).map_mut(file) }
}

/// Checks that `bytes` (the first bytes of a file of `size` bytes) is a whole recorder file of
/// this build's format.
fn check(bytes: &[u8], size: u64, path: &Path) -> Result<(), FlightError> {
    let size_err = || FlightError::Size {
        path: path.to_owned(),
        // What was read, unless the file is longer than that.
        found: if bytes.len() > FILE_SIZE {
            size
        } else {
            bytes.len() as u64
        },
        expected: FILE_SIZE as u64,
    };
    let head = &bytes[..bytes.len().min(MAGIC.len())];
    if head != &MAGIC[..head.len()] {
        return Err(FlightError::NotARecorder {
            path: path.to_owned(),
        });
    }
    // A file cut before its version (even an empty one: created, not yet written) is short.
    if bytes.len() < H_VERSION + 4 {
        return Err(size_err());
    }
    let version = get_u32(bytes, H_VERSION);
    if version != VERSION {
        return Err(FlightError::Version {
            path: path.to_owned(),
            found: version,
            supported: VERSION,
        });
    }
    if bytes.len() != FILE_SIZE {
        return Err(size_err());
    }
    let geometry = [
        (H_HEADER_SIZE, HEADER_SIZE),
        (H_EVENTS, EVENTS),
        (H_EVENT_SLOT, EVENT_SLOT),
        (H_IN_FLIGHT, IN_FLIGHT),
        (H_ATTEMPT_SLOT, ATTEMPT_SLOT),
    ];
    if geometry
        .iter()
        .any(|&(at, want)| get_u32(bytes, at) as usize != want)
    {
        let found: Vec<u32> = geometry.iter().map(|&(at, _)| get_u32(bytes, at)).collect();
        return Err(FlightError::Corrupt {
            path: path.to_owned(),
            message: format!(
                "damaged header: layout {found:?} (header, events, event slot, in-flight, \
                 attempt slot) is not {:?}",
                geometry.map(|(_, want)| want)
            ),
        });
    }
    Ok(())
}

/// The record in a checked file image. Slots that fail their checks are left out.
fn decode(bytes: &[u8]) -> ProcessRecord {
    let last_seen = get_u64(bytes, H_LAST_SEEN);
    let last_event = get_u64(bytes, H_LAST_EVENT);

    let mut events: Vec<(u64, String)> = (0..EVENTS)
        .filter_map(|i| decode_event(bytes.get(RING_AT + i * EVENT_SLOT..)?.get(..EVENT_SLOT)?))
        .collect();
    events.sort_unstable_by_key(|&(seq, _)| seq);

    let mut attempts: Vec<(u64, InFlightAttempt)> = (0..IN_FLIGHT)
        .filter_map(|i| {
            let slot = bytes
                .get(TABLE_AT + i * ATTEMPT_SLOT..)?
                .get(..ATTEMPT_SLOT)?;
            decode_attempt(slot, last_seen)
        })
        .collect();
    attempts.sort_unstable_by_key(|&(tag, _)| tag);

    ProcessRecord {
        pid: get_u32(bytes, H_PID),
        host: read_text(bytes, H_HOST).unwrap_or_default(),
        pipeline: read_text(bytes, H_PIPELINE).unwrap_or_default(),
        run: (get_u32(bytes, H_HAS_RUN) != 0).then(|| get_u64(bytes, H_RUN) as i64),
        started_at: rfc3339(get_u64(bytes, H_STARTED)),
        last_event_at: (last_event != 0).then(|| rfc3339(last_event)),
        last_seen_at: rfc3339(last_seen),
        ended: get_u64(bytes, H_ENDED) != 0,
        ending: read_text(bytes, H_ENDING).filter(|s| !s.is_empty()),
        breakers: read_text(bytes, H_BREAKERS).filter(|s| !s.is_empty()),
        previous_report: read_text(bytes, H_PREVIOUS).filter(|s| !s.is_empty()),
        in_flight: attempts.into_iter().map(|(_, a)| a).collect(),
        in_flight_more: get_u64(bytes, H_MORE),
        last_events: events.into_iter().map(|(_, e)| e).collect(),
    }
}

fn decode_event(slot: &[u8]) -> Option<(u64, String)> {
    let seq = get_u64(slot, 0);
    let len = get_u32(slot, 8);
    let text = slot.get(16..)?.get(..len as usize)?;
    (seq != 0 && get_u32(slot, 12) == event_sum(seq, len, text))
        .then(|| (seq, String::from_utf8_lossy(text).into_owned()))
}

fn decode_attempt(slot: &[u8], last_seen: u64) -> Option<(u64, InFlightAttempt)> {
    let tag = get_u64(slot, 0);
    let started = get_u64(slot, 8);
    let lens = get_u64(slot, 16);
    let (attempt, stage_len) = (lens as u32, (lens >> 32) as usize);
    let key_len = get_u32(slot, 24) as usize;
    if tag == 0 || stage_len > STAGE_MAX || key_len > KEY_MAX {
        return None;
    }
    let stage = slot.get(A_STAGE..A_STAGE + stage_len)?;
    let key = slot.get(A_KEY..A_KEY + key_len)?;
    let sum = Sum::new()
        .word(tag)
        .word(started)
        .word(lens)
        .word(key_len as u64)
        .text(stage)
        .text(key)
        .finish();
    if get_u32(slot, 28) != sum {
        return None;
    }
    let age_ms = last_seen.saturating_sub(started);
    Some((
        tag,
        InFlightAttempt {
            key: String::from_utf8_lossy(key).into_owned(),
            stage: String::from_utf8_lossy(stage).into_owned(),
            attempt,
            started_at: rfc3339(started),
            age_secs: age_ms as f64 / 1000.0,
        },
    ))
}

/// An event slot's checksum: of its sequence number, length and text.
fn event_sum(seq: u64, len: u32, text: &[u8]) -> u32 {
    Sum::new()
        .word(seq)
        .word(u64::from(len))
        .text(text)
        .finish()
}

/// A header text slot's checksum: of its length and text.
fn text_sum(len: u32, text: &[u8]) -> u32 {
    Sum::new().word(u64::from(len)).text(text).finish()
}

/// The checksum of the recorder's slots: fixed fields as words, then texts as little-endian
/// 8-byte words (the last zero-padded), each mixed in with a multiply and a shift. It detects
/// a slot torn by a kill or a concurrent write (old and new words mixed), not tampering.
#[derive(Clone, Copy)]
struct Sum(u64);

impl Sum {
    fn new() -> Sum {
        Sum(0x243f_6a88_85a3_08d3)
    }

    fn word(self, w: u64) -> Sum {
        let h = (self.0 ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        Sum(h ^ h >> 29)
    }

    fn text(self, bytes: &[u8]) -> Sum {
        bytes
            .chunks(8)
            .fold(self, |sum, chunk| sum.word(le_word(chunk)))
    }

    fn finish(self) -> u32 {
        (self.0 ^ self.0 >> 32) as u32
    }
}

/// Up to 8 bytes as a little-endian word, zero-padded.
fn le_word(chunk: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word[..chunk.len()].copy_from_slice(chunk);
    u64::from_le_bytes(word)
}

/// Writes a header text slot (`[u32 len][u32 checksum][bytes]`) into a buffer (a new file's
/// image, or a slot before [`Recorder::commit`]), cut on a character boundary to the slot's
/// capacity.
fn write_text(buf: &mut [u8], (at, cap): (usize, usize), text: &str) {
    let text = truncate(text, cap).as_bytes();
    let len = text.len() as u32;
    buf[at + 8..at + 8 + text.len()].copy_from_slice(text);
    put_u32(buf, at + 4, text_sum(len, text));
    put_u32(buf, at, len);
}

/// A header text slot: `Some("")` if empty, `None` if damaged.
fn read_text(buf: &[u8], (at, cap): (usize, usize)) -> Option<String> {
    let len = get_u32(buf, at);
    if len as usize > cap {
        return None;
    }
    let text = buf.get(at + 8..)?.get(..len as usize)?;
    (len == 0 || get_u32(buf, at + 4) == text_sum(len, text))
        .then(|| String::from_utf8_lossy(text).into_owned())
}

/// Copies `line` into `out` without its ANSI CSI sequences and trailing newline, cut on a
/// character boundary when it does not fit. Returns the length written.
fn clean_line(line: &[u8], out: &mut [u8]) -> usize {
    let line = trim_newline(line);
    let mut n = 0;
    let mut i = 0;
    while i < line.len() {
        let b = line[i];
        if b == 0x1b && line.get(i + 1) == Some(&b'[') {
            // ESC [, parameter and intermediate bytes, then one final byte (ECMA-48). A
            // sequence broken by any other byte ends there, and that byte is kept.
            i += 2;
            while line.get(i).is_some_and(|b| (0x20..=0x3f).contains(b)) {
                i += 1;
            }
            if line.get(i).is_some_and(|b| (0x40..=0x7e).contains(b)) {
                i += 1;
            }
            continue;
        }
        if n == out.len() {
            if is_continuation(b) {
                // Drop the character cut in two: its continuation bytes, then its first byte.
                let mut dropped = 0;
                while n > 0 && dropped < 3 && is_continuation(out[n - 1]) {
                    n -= 1;
                    dropped += 1;
                }
                if n > 0 && out[n - 1] >= 0xc0 {
                    n -= 1;
                }
            }
            break;
        }
        out[n] = b;
        n += 1;
        i += 1;
    }
    trim_newline(&out[..n]).len()
}

fn trim_newline(mut s: &[u8]) -> &[u8] {
    while let [rest @ .., b'\n' | b'\r'] = s {
        s = rest;
    }
    s
}

fn is_continuation(b: u8) -> bool {
    b & 0xc0 == 0x80
}

/// `s` cut to at most `max` bytes, on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// The u32 at `at`, or 0 past the end (callers check sizes first; this keeps a slip harmless).
fn get_u32(buf: &[u8], at: usize) -> u32 {
    buf.get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

fn get_u64(buf: &[u8], at: usize) -> u64 {
    buf.get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| {
        d.as_secs()
            .saturating_mul(1000)
            .saturating_add(u64::from(d.subsec_millis()))
    })
}

/// Unix milliseconds as RFC 3339 (UTC, milliseconds); damaged values past year 9999 clamped.
fn rfc3339(ms: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.min(MAX_MS));
    humantime::format_rfc3339_millis(t).to_string()
}

/// The host name, from the kernel ("" if unknown): no system call binding needed.
pub(crate) fn hostname() -> String {
    for path in ["/proc/sys/kernel/hostname", "/etc/hostname"] {
        let mut name = String::new();
        if File::open(path)
            .and_then(|f| f.take(256).read_to_string(&mut name))
            .is_ok()
            && !name.trim().is_empty()
        {
            return name.trim().to_owned();
        }
    }
    String::new()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn recorder(dir: &tempfile::TempDir) -> Arc<Recorder> {
        Arc::new(Recorder::create(&dir.path().join("flight"), "demo").expect("create"))
    }

    fn read(path: &Path) -> ProcessRecord {
        Recorder::read(path).expect("read").expect("a record")
    }

    /// Where the attempt slots in use start in a file image, in the order they began (each
    /// thread takes slots from a word of the bitmap of its own: not always slot 0).
    fn attempt_slots(bytes: &[u8]) -> Vec<usize> {
        let mut used: Vec<(u64, usize)> = (0..IN_FLIGHT)
            .map(|i| TABLE_AT + i * ATTEMPT_SLOT)
            .map(|at| (get_u64(bytes, at), at))
            .filter(|&(tag, _)| tag != 0)
            .collect();
        used.sort_unstable();
        used.into_iter().map(|(_, at)| at).collect()
    }

    fn ms_of(rfc: &str) -> u64 {
        let t = humantime::parse_rfc3339(rfc).expect("an RFC 3339 time");
        t.duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_millis() as u64
    }

    #[test]
    fn header_fields_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/folder/flight");
        let before = now_ms();
        let rec = Recorder::create(&path, "demo pipeline").expect("create");
        assert_eq!(rec.path(), path);
        assert_eq!(
            std::fs::metadata(&path).expect("meta").len(),
            FILE_SIZE as u64
        );

        let r = read(&path);
        assert_eq!(r.pid, std::process::id());
        assert_eq!(r.host, hostname());
        assert_eq!(r.pipeline, "demo pipeline");
        assert_eq!(r.run, None);
        assert!(ms_of(&r.started_at) >= before);
        assert!(
            r.started_at.ends_with('Z') && r.started_at.len() == 24,
            "{}",
            r.started_at
        );
        assert_eq!(r.last_seen_at, r.started_at);
        assert_eq!(r.last_event_at, None);
        assert!(!r.ended);
        assert_eq!(r.ending, None);
        assert!(r.in_flight.is_empty() && r.last_events.is_empty());
        assert_eq!(r.in_flight_more, 0);

        rec.set_run(-42);
        rec.set_run(7);
        rec.set_ending("watchdog: no progress for 5m");
        let r = read(&path);
        assert_eq!(r.run, Some(7));
        assert_eq!(r.ending.as_deref(), Some("watchdog: no progress for 5m"));
        assert!(!r.ended);
        rec.mark_ended();
        assert!(read(&path).ended);
        assert_eq!(rec.snapshot(), read(&path));
    }

    #[test]
    fn events_keep_the_last_ones_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rec = recorder(&dir);
        for i in 0..450 {
            rec.event(format!("event {i}\n").as_bytes());
        }
        let r = read(rec.path());
        assert_eq!(r.last_events.len(), EVENTS);
        let want: Vec<String> = (250..450).map(|i| format!("event {i}")).collect();
        assert_eq!(r.last_events, want);
        let last_event = r.last_event_at.expect("last_event_at");
        assert!(ms_of(&last_event) >= ms_of(&r.started_at));
        assert!(ms_of(&r.last_seen_at) >= ms_of(&last_event));
    }

    #[test]
    fn event_lines_are_cleaned() {
        let long_ascii = "x".repeat(1000);
        // 1 + 2 × 247 = 495 bytes fit in 496: the 248th "é" would be cut in two, so it goes.
        let long_utf8 = format!("a{}", "é".repeat(300));
        let cases: &[(&[u8], String)] = &[
            (b"plain\n", "plain".into()),
            (b"crlf\r\n", "crlf".into()),
            (
                b"\x1b[2m2026-01-01T00:00:00Z\x1b[0m \x1b[32m INFO\x1b[0m \x1b[1mrun\x1b[0m: ok\n",
                "2026-01-01T00:00:00Z  INFO run: ok".into(),
            ),
            (b"\x1b[38;5;208mcolour\x1b[m", "colour".into()),
            (b"lone \x1b escape", "lone \x1b escape".into()),
            (b"broken \x1b[12\x07bell", "broken \x07bell".into()),
            (b"cut at the end \x1b[1", "cut at the end ".into()),
            (b"tab\tand\x00nul", "tab\tand\x00nul".into()),
            (b"bad \xff utf8", "bad \u{fffd} utf8".into()),
            (b"", String::new()),
            (long_ascii.as_bytes(), "x".repeat(EVENT_TEXT)),
            (long_utf8.as_bytes(), format!("a{}", "é".repeat(247))),
        ];
        let dir = tempfile::tempdir().expect("tempdir");
        let rec = recorder(&dir);
        for (line, _) in cases {
            rec.event(line);
        }
        let got = read(rec.path()).last_events;
        let want: Vec<String> = cases.iter().map(|(_, w)| w.clone()).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn attempts_take_and_free_slots() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rec = recorder(&dir);
        let a = rec.begin("https://example.com/1", "fetch", 1);
        let b = rec.begin("key\n\x1b[31m\u{0}two", "parse", 3);
        let r = rec.snapshot();
        assert_eq!(r.in_flight.len(), 2);
        assert_eq!(r.in_flight[0].key, "https://example.com/1");
        assert_eq!(r.in_flight[0].stage, "fetch");
        assert_eq!(r.in_flight[0].attempt, 1);
        // Stored as given: escaping for display is the reader's business.
        assert_eq!(r.in_flight[1].key, "key\n\x1b[31m\u{0}two");
        assert_eq!(
            (r.in_flight[1].stage.as_str(), r.in_flight[1].attempt),
            ("parse", 3)
        );
        drop(a);
        let c = rec.begin("third", "fetch", 2);
        let keys: Vec<String> = read(rec.path())
            .in_flight
            .into_iter()
            .map(|a| a.key)
            .collect();
        assert_eq!(
            keys,
            ["key\n\x1b[31m\u{0}two", "third"],
            "in the order they began"
        );
        drop((b, c));
        assert!(read(rec.path()).in_flight.is_empty());
    }

    #[test]
    fn long_keys_and_stages_are_cut_on_a_char_boundary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rec = recorder(&dir);
        let stage = "ß".repeat(40); // 80 bytes: cut to 64
        let key = format!("k{}", "€".repeat(100_000)); // 3-byte chars, 300 kB
        let _slot = rec.begin(&key, &stage, u32::MAX);
        let got = &read(rec.path()).in_flight[0];
        assert_eq!(got.stage, "ß".repeat(32));
        assert_eq!(got.key, format!("k{}", "€".repeat((KEY_MAX - 1) / 3)));
        assert_eq!(got.attempt, u32::MAX);
    }

    #[test]
    fn a_full_table_counts_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rec = recorder(&dir);
        let mut slots: Vec<AttemptSlot> = (0..IN_FLIGHT + 3)
            .map(|i| rec.begin(&format!("item {i}"), "s", 1))
            .collect();
        let r = read(rec.path());
        assert_eq!((r.in_flight.len(), r.in_flight_more), (IN_FLIGHT, 3));
        assert_eq!(r.in_flight[0].key, "item 0");
        assert_eq!(
            r.in_flight[IN_FLIGHT - 1].key,
            format!("item {}", IN_FLIGHT - 1)
        );
        let json = serde_json::to_value(&r).expect("json");
        assert_eq!(json["in_flight_more"], 3);

        // The counted ones end: the count goes down; a table slot ends: a new one takes it.
        slots.truncate(IN_FLIGHT);
        drop(slots.remove(10));
        slots.push(rec.begin("late", "s", 2));
        let r = read(rec.path());
        assert_eq!((r.in_flight.len(), r.in_flight_more), (IN_FLIGHT, 0));
        assert_eq!(r.in_flight[IN_FLIGHT - 1].key, "late");
        slots.clear();
        let r = read(rec.path());
        assert!(r.in_flight.is_empty());
        let json = serde_json::to_value(&r).expect("json");
        assert!(json.get("in_flight_more").is_none() && json.get("ending").is_none());
    }

    #[test]
    fn torn_slots_are_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rec = recorder(&dir);
        for line in ["one", "two", "three"] {
            rec.event(line.as_bytes());
        }
        let _a = rec.begin("first", "s", 1);
        let _b = rec.begin("second", "s", 1);
        let path = rec.path().to_owned();
        let mut bytes = std::fs::read(&path).expect("read");

        // One byte of text changed in event 2 and in attempt 1; event 3 cut before its commit
        // (seq still 0); a length past the slot in a header text slot.
        bytes[RING_AT + EVENT_SLOT + 16] ^= 0x20;
        let first = attempt_slots(&bytes)[0];
        bytes[first + 32] ^= 0x01;
        put_u64(&mut bytes, RING_AT + 2 * EVENT_SLOT, 0);
        put_u32(&mut bytes, H_PIPELINE.0, 100_000);
        std::fs::write(&path, &bytes).expect("write");

        let r = read(&path);
        assert_eq!(r.last_events, ["one"]);
        let keys: Vec<&str> = r.in_flight.iter().map(|a| a.key.as_str()).collect();
        assert_eq!(keys, ["second"]);
        assert_eq!(r.pipeline, "");
    }

    #[test]
    fn order_comes_from_the_slots_not_the_ring_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rec = recorder(&dir);
        for i in 0..205 {
            rec.event(format!("{i}").as_bytes());
        }
        let mut bytes = std::fs::read(rec.path()).expect("read");
        put_u64(&mut bytes, H_NEXT_SEQ, 0xdead_beef);
        std::fs::write(rec.path(), &bytes).expect("write");
        let r = read(rec.path());
        assert_eq!(r.last_events.first().map(String::as_str), Some("5"));
        assert_eq!(r.last_events.last().map(String::as_str), Some("204"));
    }

    #[test]
    fn damaged_files_are_clear_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = std::fs::read(recorder(&dir).path()).expect("read");
        let mut other_version = good.clone();
        put_u32(&mut other_version, H_VERSION, 99);
        let mut other_geometry = good.clone();
        put_u32(&mut other_geometry, H_EVENTS, 100);
        let mut longer = good.clone();
        longer.extend_from_slice(&[0; 4096]);
        let garbage: Vec<u8> = (0..FILE_SIZE as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        let mut wrong_magic = good.clone();
        wrong_magic[0] = b'S';

        let cases: &[(&str, &[u8], &str)] = &[
            ("empty", b"", "is 0 bytes, not"),
            ("magic only", &MAGIC, "is 16 bytes, not"),
            ("truncated", &good[..FILE_SIZE / 2], "truncated or damaged"),
            ("longer", &longer, &format!("is {} bytes", FILE_SIZE + 4096)),
            ("garbage", &garbage, "is not a flight recorder file"),
            ("text", b"hello, world\n", "is not a flight recorder file"),
            ("wrong magic", &wrong_magic, "is not a flight recorder file"),
            (
                "other version",
                &other_version,
                &format!("format version 99, this build reads version {VERSION}"),
            ),
            ("other geometry", &other_geometry, "damaged header: layout"),
        ];
        for (name, bytes, message) in cases {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).expect("write");
            let err = Recorder::read(&path).expect_err(name).to_string();
            assert!(err.contains(&*path.to_string_lossy()), "{name}: {err}");
            assert!(err.contains(message), "{name}: {err}");
        }

        assert!(Recorder::read(&dir.path().join("missing"))
            .expect("read")
            .is_none());
        let err = Recorder::read(dir.path())
            .expect_err("a folder")
            .to_string();
        assert!(err.contains("not a regular file"), "{err}");
    }

    #[test]
    fn damaged_values_do_not_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rec = recorder(&dir);
        rec.event(b"x");
        let _slot = rec.begin("k", "s", 1);
        let mut bytes = std::fs::read(rec.path()).expect("read");
        for at in [H_STARTED, H_LAST_EVENT, H_LAST_SEEN, H_RUN, H_MORE] {
            put_u64(&mut bytes, at, u64::MAX);
        }
        put_u32(&mut bytes, H_HAS_RUN, 1);
        put_u32(&mut bytes, RING_AT + 8, u32::MAX); // event length
        let slot = attempt_slots(&bytes)[0];
        put_u32(&mut bytes, slot + 20, u32::MAX); // stage length
        std::fs::write(rec.path(), &bytes).expect("write");
        let r = read(rec.path());
        assert_eq!(r.started_at, "9999-12-31T23:59:59.999Z");
        assert_eq!(r.run, Some(-1));
        assert!(r.last_events.is_empty() && r.in_flight.is_empty());
    }

    #[cfg(unix)]
    #[test]
    fn the_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        let fresh = dir.path().join("fresh");
        Recorder::create(&fresh, "p").expect("create");
        assert_eq!(mode(&fresh), 0o600);

        let existing = dir.path().join("existing");
        std::fs::write(&existing, b"old contents").expect("write");
        std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        Recorder::create(&existing, "p").expect("create");
        assert_eq!(mode(&existing), 0o600);
        assert_eq!(read(&existing).pipeline, "p");
    }

    #[test]
    fn create_starts_a_new_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = recorder(&dir);
        old.event(b"old");
        old.set_run(1);
        old.mark_ended();
        drop(old);
        let rec = Recorder::create(&dir.path().join("flight"), "next").expect("create");
        let r = read(rec.path());
        assert_eq!((r.pipeline.as_str(), r.run, r.ended), ("next", None, false));
        assert!(r.last_events.is_empty());
    }

    #[test]
    fn a_killed_process_leaves_its_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rec = recorder(&dir);
        let path = rec.path().to_owned();
        rec.set_run(12);
        rec.event(b"\x1b[32m INFO\x1b[0m stage fetch: slow\n");
        let slot = rec.begin("item-7", "fetch", 2);
        // Read while the writer is alive.
        assert_eq!(read(&path).in_flight.len(), 1);
        // Nothing is dropped: no destructor runs, as under kill -9.
        std::mem::forget(slot);
        std::mem::forget(rec);
        let r = read(&path);
        assert_eq!(r.run, Some(12));
        assert!(!r.ended);
        assert_eq!(r.last_events, [" INFO stage fetch: slow"]);
        assert_eq!(r.in_flight.len(), 1);
        assert_eq!(
            (r.in_flight[0].key.as_str(), r.in_flight[0].attempt),
            ("item-7", 2)
        );
    }

    #[test]
    fn age_runs_to_the_last_sign_of_life() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rec = recorder(&dir);
        std::thread::sleep(Duration::from_millis(5));
        let _slot = rec.begin("k", "s", 1);
        // Began after the last sign of life: not a negative age.
        assert_eq!(rec.snapshot().in_flight[0].age_secs, 0.0);
        std::thread::sleep(Duration::from_millis(30));
        rec.touch();
        let r = read(rec.path());
        let a = &r.in_flight[0];
        let want = ms_of(&r.last_seen_at) - ms_of(&a.started_at);
        assert!(want >= 30, "{want}");
        assert_eq!(a.age_secs, want as f64 / 1000.0);
        assert_eq!(r.last_event_at, None, "touch is not an event");
    }

    #[test]
    fn many_threads_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rec = recorder(&dir);
        std::thread::scope(|s| {
            for t in 0..4 {
                let rec = Arc::clone(&rec);
                s.spawn(move || {
                    for i in 0..2000 {
                        let _slot = rec.begin(&format!("{t}/{i}"), "s", 1);
                        rec.event(format!("thread {t} event {i}").as_bytes());
                        rec.touch();
                    }
                });
            }
        });
        let r = read(rec.path());
        assert!(r.in_flight.is_empty() && r.in_flight_more == 0);
        assert_eq!(r.last_events.len(), EVENTS);
        let last: Vec<&String> = (0..4)
            .map(|t| format!("thread {t} event 1999"))
            .filter_map(|w| r.last_events.iter().find(|e| **e == w))
            .collect();
        assert!(!last.is_empty(), "the last events are among the kept ones");
    }

    #[test]
    fn snapshots_while_writers_run_see_only_whole_slots() {
        let rec = Arc::new(Recorder::in_memory("p").expect("anonymous map"));
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let mut writers = Vec::new();
            for t in 0..3 {
                let (rec, done) = (&rec, &done);
                writers.push(s.spawn(move || {
                    // Until the reader has taken its snapshots (at most 10 s).
                    let until = std::time::Instant::now() + Duration::from_secs(10);
                    let mut i = 0usize;
                    while !done.load(Ordering::Relaxed) && std::time::Instant::now() < until {
                        i += 1;
                        let key = format!("{t}/{i}/{}", "k".repeat(i % 200));
                        let _slot = rec.begin(&key, &format!("stage{t}"), i as u32);
                        rec.event(format!("thread {t} event {i}").as_bytes());
                        rec.set_ending(&format!("ending {t} {i}"));
                    }
                }));
            }
            let (rec, done) = (&rec, &done);
            let reader = s.spawn(move || {
                let mut seen = 0;
                for _ in 0..300 {
                    let r = rec.snapshot();
                    for a in &r.in_flight {
                        // Every entry is one attempt's, whole: its key, stage and attempt agree.
                        let parts: Vec<&str> = a.key.splitn(3, '/').collect();
                        assert_eq!(parts.len(), 3, "{a:?}");
                        assert_eq!(a.stage, format!("stage{}", parts[0]), "{a:?}");
                        assert_eq!(a.attempt.to_string(), parts[1], "{a:?}");
                        assert_eq!(parts[2].len(), a.attempt as usize % 200, "{a:?}");
                        seen += 1;
                    }
                    for e in &r.last_events {
                        assert!(e.starts_with("thread ") && e.contains(" event "), "{e}");
                    }
                    if let Some(ending) = &r.ending {
                        assert!(ending.starts_with("ending "), "{ending}");
                    }
                }
                done.store(true, Ordering::Relaxed);
                seen
            });
            let seen = reader.join().expect("reader");
            for writer in writers {
                writer.join().expect("writer");
            }
            assert!(seen > 0, "the reader saw attempts in flight");
        });
        let r = rec.snapshot();
        assert!(r.in_flight.is_empty() && r.in_flight_more == 0);
        assert_eq!(r.last_events.len(), EVENTS);
    }

    #[test]
    fn a_prepared_file_takes_the_old_ones_place_only_when_placed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("demo.flight");
        let old = Recorder::create(&path, "old").expect("create");
        old.event(b"the old process's last line");
        drop(old);
        // Left by processes killed while preparing: removed; other names are kept.
        for name in [
            "demo.flight.new-1",
            "demo.flight.new-99999999",
            "demo.flight.new-x",
        ] {
            std::fs::write(dir.path().join(name), b"x").expect("write");
        }

        let new = Recorder::prepare(&path, "new").expect("prepare");
        new.event(b"the previous process was doing this");
        assert_eq!(read(&path).pipeline, "old", "not placed yet");
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let ours = format!("demo.flight.new-{}", std::process::id());
        assert_eq!(names, ["demo.flight", ours.as_str(), "demo.flight.new-x"]);

        new.place().expect("place");
        new.place().expect("placing twice is a no-op");
        let r = read(&path);
        assert_eq!(r.pipeline, "new");
        assert_eq!(r.last_events, ["the previous process was doing this"]);
        new.event(b"later");
        assert_eq!(read(&path).last_events.len(), 2, "written through the map");
        assert!(!dir.path().join(ours).exists());
    }

    #[test]
    fn a_file_name_near_the_limit_gets_a_temporary_name_that_fits() {
        let dir = tempfile::tempdir().expect("tempdir");
        // 247 bytes: allowed, and `.new-<pid>` after it would not be.
        let path = dir.path().join(format!("{}.flight", "n".repeat(240)));
        let stale = temporary_name(&path, 1);
        let stale_name = stale.file_name().expect("a name").len();
        assert!(stale_name <= 255, "{stale_name}");
        std::fs::write(&stale, b"left by a killed process").expect("write");
        let rec = Recorder::prepare(&path, "p").expect("prepare");
        assert!(!stale.exists(), "the stale temporary file is removed");
        rec.place().expect("place");
        assert_eq!(read(&path).pipeline, "p");
    }

    #[test]
    fn the_report_on_the_previous_process_is_kept_apart_from_the_events() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rec = recorder(&dir);
        assert_eq!(read(rec.path()).previous_report, None);
        rec.set_previous_report(&"é".repeat(4000));
        for i in 0..EVENTS + 5 {
            rec.event(format!("later line {i}").as_bytes());
        }
        rec.set_ending("watchdog");
        let r = read(rec.path());
        assert_eq!(r.previous_report, Some("é".repeat(H_PREVIOUS.1 / 2)));
        assert_eq!(r.ending.as_deref(), Some("watchdog"));
        let json = serde_json::to_value(&r).expect("json");
        assert!(json["previous_report"]
            .as_str()
            .is_some_and(|t| t.starts_with("éé")));
    }

    #[test]
    fn handles_cross_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Recorder>();
        send_sync::<AttemptSlot>();
    }

    #[test]
    fn long_endings_are_cut_on_a_char_boundary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rec = recorder(&dir);
        rec.set_ending(&"ω".repeat(1000));
        assert_eq!(read(rec.path()).ending, Some("ω".repeat(H_ENDING.1 / 2)));
        rec.set_ending("short");
        assert_eq!(read(rec.path()).ending.as_deref(), Some("short"));
    }

    #[test]
    fn json_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rec = recorder(&dir);
        rec.set_run(3);
        rec.event(b"hello");
        let _slot = rec.begin("k", "s", 1);
        rec.set_ending("why");
        let r = rec.snapshot();
        let json = serde_json::to_string(&r).expect("json");
        let back: ProcessRecord = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, r);
        let minimal = r#"{"pid":1,"host":"","pipeline":"p","run":null,"started_at":"x",
            "last_event_at":null,"last_seen_at":"x","ended":true,"in_flight":[],"last_events":[]}"#;
        let m: ProcessRecord = serde_json::from_str(minimal).expect("parse minimal");
        assert_eq!((m.ending, m.in_flight_more), (None, 0));
    }

    #[test]
    fn a_recorder_in_memory_keeps_its_table() {
        let rec = Arc::new(Recorder::in_memory("p").expect("anonymous map"));
        let slot = rec.begin("k1", "fetch", 2);
        rec.event(b"hello\n");
        let r = rec.snapshot();
        assert_eq!(r.pipeline, "p");
        assert_eq!(r.in_flight.len(), 1);
        assert_eq!(
            (r.in_flight[0].key.as_str(), r.in_flight[0].attempt),
            ("k1", 2)
        );
        assert_eq!(r.last_events, vec!["hello".to_owned()]);
        drop(slot);
        assert!(rec.snapshot().in_flight.is_empty());
    }

    #[test]
    fn create_replaces_a_symlink_or_a_fifo_and_never_writes_through_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"someone else's data").expect("write victim");
        let path = dir.path().join("demo.flight");
        std::os::unix::fs::symlink(&victim, &path).expect("symlink");
        let rec = Recorder::create(&path, "demo").expect("create over a symlink");
        rec.event(b"hello");
        assert_eq!(
            std::fs::read(&victim).expect("read victim"),
            b"someone else's data"
        );
        let meta = std::fs::symlink_metadata(&path).expect("stat");
        assert!(meta.file_type().is_file(), "{meta:?}");
        drop(rec);

        std::fs::remove_file(&path).expect("remove");
        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .expect("mkfifo");
        assert!(made.success());
        let rec = Recorder::create(&path, "demo").expect("create over a FIFO");
        assert!(std::fs::symlink_metadata(&path)
            .expect("stat")
            .file_type()
            .is_file());
        assert_eq!(
            Recorder::read(&path).expect("read").map(|r| r.pipeline),
            Some("demo".into())
        );
        drop(rec);
        // Nothing left beside it.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }
}
