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
//! Every variable-length slot carries its length and an FNV-1a checksum of its contents, and is
//! written as invalidate → contents → checksum → commit, so a copy cut short by `kill -9` (or
//! seen half-done by a reader while the writer runs) fails its checksum and is skipped. Ring
//! slots carry their own sequence number: the order of the events does not depend on a ring
//! index that could itself be torn.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{compiler_fence, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use memmap2::{MmapMut, MmapOptions};

/// How many log events the ring keeps (the last ones).
pub const EVENTS: usize = 200;
/// How many attempts the in-flight table holds; more are only counted (`in_flight_more`).
pub const IN_FLIGHT: usize = 1024;

/// The format version: bumped whenever the layout changes.
const VERSION: u32 = 1;
const MAGIC: [u8; 16] = *b"stagewise flight";

const HEADER_SIZE: usize = 2048;
const EVENT_SLOT: usize = 512;
const ATTEMPT_SLOT: usize = 320;
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

// An event slot: `[u64 seq][u32 len][u32 checksum][text]`; seq 0 = empty or being written.
const EVENT_TEXT: usize = EVENT_SLOT - 16;
// An attempt slot: `[u64 tag][u64 started ms][u32 attempt][u32 stage len][u32 key len]
// [u32 checksum][stage bytes, key bytes]`; tag 0 = free or being written, else the order of
// `begin` calls.
const ATTEMPT_TEXT: usize = ATTEMPT_SLOT - 32;
/// Most bytes of a stage name kept: the rest of an attempt slot's text is the key's.
const STAGE_MAX: usize = 64;

/// The last millisecond RFC 3339 can write (year 9999): a damaged timestamp is clamped to it.
const MAX_MS: u64 = 253_402_300_799_999;

const _: () = assert!(H_ENDING.0 + 8 + H_ENDING.1 <= HEADER_SIZE);
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

/// The writer of a recorder file. All methods take `&self` and may be called from any thread;
/// each holds one internal lock for a few memory copies.
pub struct Recorder {
    path: PathBuf,
    state: Mutex<State>,
}

struct State {
    map: MmapMut,
    /// The sequence number of the last event written (0: none yet).
    seq: u64,
    /// The tag of the last attempt slot filled.
    tag: u64,
    /// Free attempt slots; the lowest index is popped first.
    free: Vec<u32>,
    more: u64,
    last_seen: u64,
}

impl fmt::Debug for Recorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recorder")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Recorder {
    /// Create (or overwrite: truncate and lay out anew) the file at `path`, mode 0600 (also
    /// when it existed with wider permissions), and map it. Creates the parent folder.
    ///
    /// The whole file is written once here, so that a full disk is an error now rather than a
    /// `SIGBUS` on a later write through the map (on file systems that do not copy on write).
    /// A previous process's record is lost: [`Recorder::read`] it first. The caller must keep
    /// other processes from creating the same file while this one writes it (the runner does,
    /// by holding the checkpoint store's lock): truncating a mapped file kills its writer.
    pub fn create(path: &Path, pipeline: &str) -> Result<Recorder, FlightError> {
        let io_err = |source| FlightError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io_err)?;
        }
        // A new file of our own, then renamed over whatever is at `path`: whatever that is (a
        // symlink to someone else's file, a FIFO, a file of wider permissions) is replaced, never
        // written through or waited on. `create_new` refuses to follow a symlink planted at the
        // temporary name too.
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(format!(".new-{}", std::process::id()));
        let temporary = PathBuf::from(temporary);
        let _ = std::fs::remove_file(&temporary);
        let mut options = OpenOptions::new();
        options.read(true).write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&temporary).map_err(io_err)?;
        let now = now_ms();
        let placed = file
            .write_all(&image(pipeline, now))
            .and_then(|()| std::fs::rename(&temporary, path));
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&temporary);
            return Err(io_err(e));
        }

        let map = map(&file).map_err(io_err)?;
        Ok(Recorder::with_map(path.to_owned(), map, now))
    }

    /// A recorder without a file, when none can be created: the watchdog still reads its table
    /// of attempts in flight, and the checkpoint store still gets its copies.
    pub fn in_memory(pipeline: &str) -> io::Result<Recorder> {
        let now = now_ms();
        let image = image(pipeline, now);
        let mut map = MmapMut::map_anon(FILE_SIZE)?;
        map.copy_from_slice(&image);
        Ok(Recorder::with_map(PathBuf::new(), map, now))
    }

    fn with_map(path: PathBuf, map: MmapMut, now: u64) -> Recorder {
        Recorder {
            path,
            state: Mutex::new(State {
                map,
                seq: 0,
                tag: 0,
                free: (0..IN_FLIGHT as u32).rev().collect(),
                more: 0,
                last_seen: now,
            }),
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
        // Checked before opening: opening a FIFO for reading would block.
        let meta = match std::fs::metadata(path) {
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
        let file = match File::open(path) {
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

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The run id, once known.
    pub fn set_run(&self, run: i64) {
        let mut st = self.lock();
        put_u32(&mut st.map, H_HAS_RUN, 0);
        compiler_fence(Ordering::SeqCst);
        put_u64(&mut st.map, H_RUN, run as u64);
        compiler_fence(Ordering::SeqCst);
        put_u32(&mut st.map, H_HAS_RUN, 1);
    }

    /// One log line, as formatted for stderr. ANSI CSI sequences (`ESC [ … final byte`) and
    /// the trailing newline are removed, the rest is kept as is, cut on a character boundary to
    /// the slot's size (invalid UTF-8 is replaced when read). Goes into the ring of the last
    /// [`EVENTS`] events; sets `last_event_at` and `last_seen_at`.
    pub fn event(&self, line: &[u8]) {
        let mut text = [0u8; EVENT_TEXT];
        let len = clean_line(line, &mut text);
        let text = &text[..len];
        let sum = fnv1a(FNV_OFFSET, text);
        let now = now_ms();

        let mut guard = self.lock();
        let st = &mut *guard;
        st.seq += 1;
        let seq = st.seq;
        let at = RING_AT + ((seq - 1) % EVENTS as u64) as usize * EVENT_SLOT;
        let slot = &mut st.map[at..at + EVENT_SLOT];
        put_u64(slot, 0, 0);
        compiler_fence(Ordering::SeqCst);
        put_u32(slot, 8, len as u32);
        slot[16..16 + len].copy_from_slice(text);
        put_u32(slot, 12, event_sum(sum, len as u32, seq));
        compiler_fence(Ordering::SeqCst);
        put_u64(slot, 0, seq);
        put_u64(&mut st.map, H_NEXT_SEQ, seq + 1);
        put_u64(&mut st.map, H_LAST_EVENT, now);
        st.seen(now);
    }

    /// An attempt began: it takes a slot of the in-flight table until the returned guard is
    /// dropped. When the table is full, the attempt is only counted in `in_flight_more`.
    ///
    /// The key and the stage are stored as they are, cut on a character boundary to fit
    /// (the stage to 64 bytes, the key to the rest of the slot's 288).
    pub fn begin(self: &Arc<Self>, key: &str, stage: &str, attempt: u32) -> AttemptSlot {
        let stage = truncate(stage, STAGE_MAX);
        let key = truncate(key, ATTEMPT_TEXT - stage.len());
        let sum = fnv1a(fnv1a(FNV_OFFSET, stage.as_bytes()), key.as_bytes());
        let now = now_ms();

        let mut guard = self.lock();
        let st = &mut *guard;
        let Some(index) = st.free.pop() else {
            st.more += 1;
            put_u64(&mut st.map, H_MORE, st.more);
            return AttemptSlot {
                recorder: Arc::clone(self),
                slot: None,
            };
        };
        st.tag += 1;
        let tag = st.tag;
        let at = TABLE_AT + index as usize * ATTEMPT_SLOT;
        let slot = &mut st.map[at..at + ATTEMPT_SLOT];
        put_u64(slot, 0, 0);
        compiler_fence(Ordering::SeqCst);
        put_u64(slot, 8, now);
        put_u32(slot, 16, attempt);
        put_u32(slot, 20, stage.len() as u32);
        put_u32(slot, 24, key.len() as u32);
        slot[32..32 + stage.len()].copy_from_slice(stage.as_bytes());
        slot[32 + stage.len()..32 + stage.len() + key.len()].copy_from_slice(key.as_bytes());
        let fields = AttemptFields {
            tag,
            started: now,
            attempt,
            stage_len: stage.len() as u32,
            key_len: key.len() as u32,
        };
        put_u32(slot, 28, fields.sum(sum));
        compiler_fence(Ordering::SeqCst);
        put_u64(slot, 0, tag);
        // Starting an attempt is a sign of life: its age is never negative.
        st.seen(now);
        AttemptSlot {
            recorder: Arc::clone(self),
            slot: Some((index, tag)),
        }
    }

    /// The liveness tick: sets `last_seen_at`. One lock and an 8-byte store.
    pub fn touch(&self) {
        let now = now_ms();
        self.lock().seen(now);
    }

    /// The process is ending abnormally, and this is why (kept in `ending`, cut to 1016 bytes
    /// on a character boundary; an empty message is no message). Sets `last_seen_at`.
    pub fn set_ending(&self, why: &str) {
        let now = now_ms();
        let mut st = self.lock();
        write_text(&mut st.map, H_ENDING, why);
        st.seen(now);
    }

    /// The process ended normally. Sets `last_seen_at`.
    pub fn mark_ended(&self) {
        let now = now_ms();
        let mut st = self.lock();
        put_u64(&mut st.map, H_ENDED, 1);
        st.seen(now);
    }

    /// The record as it is now: what [`Recorder::read`] would return.
    pub fn snapshot(&self) -> ProcessRecord {
        let bytes = self.lock().map.to_vec();
        decode(&bytes)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The map holds no invariant a panicking writer could break that reading does not
        // already tolerate (a torn slot is skipped).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    fn seen(&mut self, now: u64) {
        // The wall clock may step back; `last_seen_at` does not.
        if now > self.last_seen {
            self.last_seen = now;
            put_u64(&mut self.map, H_LAST_SEEN, now);
        }
    }
}

/// An attempt's place in the in-flight table (or in `in_flight_more`), freed when dropped.
/// Cheap to hold across `.await` points: it owns a handle to the recorder.
#[must_use = "the attempt leaves the in-flight table when this is dropped"]
pub struct AttemptSlot {
    recorder: Arc<Recorder>,
    /// The slot's index and tag; `None` when the table was full.
    slot: Option<(u32, u64)>,
}

impl fmt::Debug for AttemptSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttemptSlot")
            .field("slot", &self.slot.map(|(index, _)| index))
            .finish_non_exhaustive()
    }
}

impl Drop for AttemptSlot {
    fn drop(&mut self) {
        let mut guard = self.recorder.lock();
        let st = &mut *guard;
        match self.slot {
            Some((index, tag)) => {
                let at = TABLE_AT + index as usize * ATTEMPT_SLOT;
                if get_u64(&st.map, at) == tag {
                    put_u64(&mut st.map, at, 0);
                }
                st.free.push(index);
            }
            None => {
                st.more = st.more.saturating_sub(1);
                put_u64(&mut st.map, H_MORE, st.more);
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
    // mapped. The file is ours: just created (or truncated) by this process, mode 0600, and
    // sized above. Another stagewise process would only write it through `Recorder::create`,
    // which the caller excludes by holding the checkpoint store's runner lock; readers copy it
    // with `read(2)` and never write. Our own writes go through `&mut` under the mutex.
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
        in_flight: attempts.into_iter().map(|(_, a)| a).collect(),
        in_flight_more: get_u64(bytes, H_MORE),
        last_events: events.into_iter().map(|(_, e)| e).collect(),
    }
}

fn decode_event(slot: &[u8]) -> Option<(u64, String)> {
    let seq = get_u64(slot, 0);
    let len = get_u32(slot, 8);
    let text = slot.get(16..)?.get(..len as usize)?;
    (seq != 0 && get_u32(slot, 12) == event_sum(fnv1a(FNV_OFFSET, text), len, seq))
        .then(|| (seq, String::from_utf8_lossy(text).into_owned()))
}

fn decode_attempt(slot: &[u8], last_seen: u64) -> Option<(u64, InFlightAttempt)> {
    let fields = AttemptFields {
        tag: get_u64(slot, 0),
        started: get_u64(slot, 8),
        attempt: get_u32(slot, 16),
        stage_len: get_u32(slot, 20),
        key_len: get_u32(slot, 24),
    };
    if fields.tag == 0 || fields.stage_len as usize > STAGE_MAX {
        return None;
    }
    let text = slot
        .get(32..)?
        .get(..fields.stage_len as usize + fields.key_len as usize)?;
    if get_u32(slot, 28) != fields.sum(fnv1a(FNV_OFFSET, text)) {
        return None;
    }
    let (stage, key) = text.split_at(fields.stage_len as usize);
    let age_ms = last_seen.saturating_sub(fields.started);
    Some((
        fields.tag,
        InFlightAttempt {
            key: String::from_utf8_lossy(key).into_owned(),
            stage: String::from_utf8_lossy(stage).into_owned(),
            attempt: fields.attempt,
            started_at: rfc3339(fields.started),
            age_secs: age_ms as f64 / 1000.0,
        },
    ))
}

/// The fixed fields of an attempt slot, which its checksum covers with the text.
struct AttemptFields {
    tag: u64,
    started: u64,
    attempt: u32,
    stage_len: u32,
    key_len: u32,
}

impl AttemptFields {
    /// The slot's checksum, continuing `text_sum` (the FNV-1a of the stage and key bytes).
    fn sum(&self, text_sum: u32) -> u32 {
        let mut h = fnv1a(text_sum, &self.started.to_le_bytes());
        h = fnv1a(h, &self.attempt.to_le_bytes());
        h = fnv1a(h, &self.stage_len.to_le_bytes());
        h = fnv1a(h, &self.key_len.to_le_bytes());
        fnv1a(h, &self.tag.to_le_bytes())
    }
}

/// An event slot's checksum, continuing `text_sum` with its length and sequence number.
fn event_sum(text_sum: u32, len: u32, seq: u64) -> u32 {
    fnv1a(fnv1a(text_sum, &len.to_le_bytes()), &seq.to_le_bytes())
}

/// Writes a header text slot (`[u32 len][u32 checksum][bytes]`), cut on a character boundary
/// to the slot's capacity.
fn write_text(buf: &mut [u8], (at, cap): (usize, usize), text: &str) {
    let text = truncate(text, cap).as_bytes();
    let len = text.len() as u32;
    put_u32(buf, at, 0);
    compiler_fence(Ordering::SeqCst);
    buf[at + 8..at + 8 + text.len()].copy_from_slice(text);
    put_u32(
        buf,
        at + 4,
        fnv1a(fnv1a(FNV_OFFSET, text), &len.to_le_bytes()),
    );
    compiler_fence(Ordering::SeqCst);
    put_u32(buf, at, len);
}

/// A header text slot: `Some("")` if empty, `None` if damaged.
fn read_text(buf: &[u8], (at, cap): (usize, usize)) -> Option<String> {
    let len = get_u32(buf, at);
    if len as usize > cap {
        return None;
    }
    let text = buf.get(at + 8..)?.get(..len as usize)?;
    (len == 0 || get_u32(buf, at + 4) == fnv1a(fnv1a(FNV_OFFSET, text), &len.to_le_bytes()))
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

const FNV_OFFSET: u32 = 0x811c_9dc5;

/// FNV-1a (32 bits), continuing from `h` (start from [`FNV_OFFSET`]).
fn fnv1a(mut h: u32, bytes: &[u8]) -> u32 {
    for &b in bytes {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
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
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Unix milliseconds as RFC 3339 (UTC, milliseconds); damaged values past year 9999 clamped.
fn rfc3339(ms: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.min(MAX_MS));
    humantime::format_rfc3339_millis(t).to_string()
}

/// The host name, from the kernel ("" if unknown): no system call binding needed.
fn hostname() -> String {
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

    fn recorder(dir: &tempfile::TempDir) -> Arc<Recorder> {
        Arc::new(Recorder::create(&dir.path().join("flight"), "demo").expect("create"))
    }

    fn read(path: &Path) -> ProcessRecord {
        Recorder::read(path).expect("read").expect("a record")
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
        assert_eq!(
            got.key,
            format!("k{}", "€".repeat((ATTEMPT_TEXT - 64 - 1) / 3))
        );
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
        bytes[TABLE_AT + 32] ^= 0x01;
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
                "format version 99, this build reads version 1",
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
        put_u32(&mut bytes, TABLE_AT + 20, u32::MAX); // stage length
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
