//! A new run's manifest: buffered, written in chunks through a backend's [`ManifestRows`],
//! numbered without gaps, cleared of repeated keys (each counted, the first few by name), and
//! hidden until committed.

use std::collections::HashSet;

use super::super::{Duplicates, ManifestWriter, RunInfo, RunStatus, StoreError};

/// Manifest rows per write (and transaction) while a batch is taken.
pub(super) const MANIFEST_CHUNK: usize = 1000;
/// Repeated keys reported by name, at most.
const SHOWN_DUPLICATES: usize = 5;

/// A chunk of a manifest to write.
#[derive(Debug, Clone, Copy)]
pub(in crate::checkpoint) struct Chunk<'a> {
    /// The run whose manifest it is.
    pub run: i64,
    /// The seq of the last row written so far (0 before the first).
    pub after_seq: i64,
    /// The stage every item starts at.
    pub first_stage: &'a str,
    /// `(key, record)` of each row; no key twice.
    pub rows: &'a [(String, String)],
}

/// How a backend writes a new run's manifest, on a connection of its own; [`Manifest`] buffers
/// and counts.
pub(in crate::checkpoint) trait ManifestRows: Send + 'static {
    /// Add the chunk's rows to its run's manifest in one transaction, pending at its first
    /// stage, numbering the new ones `after_seq + 1`, `after_seq + 2`, … without gaps in the
    /// order given. A key already in the manifest keeps its row; the positions in `rows` of
    /// those keys are returned.
    fn insert(&mut self, chunk: Chunk<'_>) -> Result<Vec<usize>, StoreError>;

    /// Make `run` visible, with `items` items: its status goes from `taking` to `running`.
    fn publish(&mut self, run: i64, items: i64) -> Result<(), StoreError>;

    /// Delete `run` and its rows: it was never published. Best effort: whatever is left stays
    /// hidden under `taking` and goes at the pipeline's next `begin_run`.
    fn discard(&mut self, run: i64);
}

/// A new run's manifest: rows are written in chunks of [`MANIFEST_CHUNK`], each in a short
/// transaction of its own, so that no write lock is held while the source reads (a source stuck
/// past its timeout must not block the next attempt). Nothing is visible until
/// [`ManifestWriter::commit`]; dropped before, the run and its rows are deleted.
pub(super) struct Manifest<R: ManifestRows> {
    rows: R,
    run: i64,
    started: String,
    first_stage: String,
    /// The seq of the last row written.
    next_seq: i64,
    /// `(key, record)` of the rows not yet written.
    buffer: Vec<(String, String)>,
    duplicates: Duplicates,
    committed: bool,
}

impl<R: ManifestRows> Manifest<R> {
    /// The manifest of `run` (already stored as `taking`, started at `started`), written
    /// through `rows`; its items start at `first_stage`.
    pub(super) fn new(rows: R, run: i64, started: String, first_stage: &str) -> Self {
        Manifest {
            rows,
            run,
            started,
            first_stage: first_stage.to_owned(),
            next_seq: 0,
            buffer: Vec::with_capacity(MANIFEST_CHUNK),
            duplicates: Duplicates::default(),
            committed: false,
        }
    }

    /// Count a repeat of `key`, and name it if it is one of the first few.
    fn note_duplicate(&mut self, key: String) {
        self.duplicates.count += 1;
        if self.duplicates.first.len() < SHOWN_DUPLICATES {
            self.duplicates.first.push(key);
        }
    }

    /// Write the buffered rows: keys repeated within the chunk are dropped here, keys already
    /// in the manifest by the backend; the repeats are noted in the order the source gave them.
    fn flush(&mut self) -> Result<(), StoreError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::take(&mut self.buffer);
        // Which rows repeat a key seen earlier in the chunk, found without copying the keys.
        let repeated: Vec<bool> = {
            let mut seen = HashSet::with_capacity(chunk.len());
            chunk
                .iter()
                .map(|(key, _)| !seen.insert(key.as_str()))
                .collect()
        };
        // (position in the chunk, key) of every repeat.
        let mut repeats: Vec<(usize, String)> = Vec::new();
        let mut fresh = Vec::with_capacity(chunk.len());
        let mut positions = Vec::with_capacity(chunk.len());
        for (i, ((key, record), repeat)) in chunk.into_iter().zip(repeated).enumerate() {
            if repeat {
                repeats.push((i, key));
                continue;
            }
            fresh.push((key, record));
            positions.push(i);
        }
        let existing = self.rows.insert(Chunk {
            run: self.run,
            after_seq: self.next_seq,
            first_stage: &self.first_stage,
            rows: &fresh,
        })?;
        let added = fresh.len() - existing.len();
        self.next_seq += i64::try_from(added).expect("a chunk is small");
        for at in existing {
            repeats.push((positions[at], std::mem::take(&mut fresh[at].0)));
        }
        repeats.sort_by_key(|(i, _)| *i);
        for (_, key) in repeats {
            self.note_duplicate(key);
        }
        Ok(())
    }
}

impl<R: ManifestRows> ManifestWriter for Manifest<R> {
    fn add(&mut self, key: &str, record: &str) -> Result<(), StoreError> {
        self.buffer.push((key.to_owned(), record.to_owned()));
        if self.buffer.len() >= MANIFEST_CHUNK {
            self.flush()?;
        }
        Ok(())
    }

    fn commit(mut self: Box<Self>) -> Result<(RunInfo, Duplicates), StoreError> {
        self.flush()?;
        self.rows.publish(self.run, self.next_seq)?;
        self.committed = true;
        let run = RunInfo {
            id: self.run,
            status: RunStatus::Running,
            items: u64::try_from(self.next_seq).unwrap_or(0),
            started_at: self.started.clone(),
        };
        Ok((run, std::mem::take(&mut self.duplicates)))
    }
}

impl<R: ManifestRows> Drop for Manifest<R> {
    fn drop(&mut self) {
        if !self.committed {
            // Not committed: the run and its manifest vanish together (or at the next take).
            self.rows.discard(self.run);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> String {
        x.to_owned()
    }

    /// A backend of memory: keys already present are those of earlier chunks.
    #[derive(Default)]
    struct Rows {
        stored: HashSet<String>,
    }

    impl ManifestRows for Rows {
        fn insert(&mut self, chunk: Chunk<'_>) -> Result<Vec<usize>, StoreError> {
            assert_eq!(
                chunk.after_seq,
                self.stored.len() as i64,
                "numbered without gaps"
            );
            let mut existing = Vec::new();
            for (i, (key, _)) in chunk.rows.iter().enumerate() {
                if !self.stored.insert(key.clone()) {
                    existing.push(i);
                }
            }
            Ok(existing)
        }

        fn publish(&mut self, _run: i64, items: i64) -> Result<(), StoreError> {
            assert_eq!(items, self.stored.len() as i64);
            Ok(())
        }

        fn discard(&mut self, _run: i64) {}
    }

    #[test]
    fn repeated_keys_are_counted_in_source_order_across_chunks() {
        let mut m = Box::new(Manifest::new(Rows::default(), 1, s("now"), "one"));
        for (key, _) in crate::checkpoint::tests::repeating_source() {
            m.add(&key, "{}").expect("add");
        }
        let (run, duplicates) = m.commit().expect("commit");
        assert_eq!(run.items, 1500);
        assert_eq!(duplicates.count, 1000);
        assert_eq!(duplicates.first, ["0", "0", "1", "2", "3"]);
    }
}
