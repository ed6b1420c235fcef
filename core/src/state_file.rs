//! How stagewise makes the files of its own state: the SQLite store (and the `-wal` and `-shm`
//! files SQLite makes beside it), its lock file, the run's summary, the flight record and the
//! temporary files they are written under.
//!
//! They hold item keys, records and errors, which may be private: a file is created mode `0600`
//! and a folder made for them `0700` (a folder that exists is left as it is: it is the
//! operator's). Nothing is ever opened through a symbolic link, so a link planted at a state
//! path cannot point a write at someone else's file: such a path is refused, naming it, and what
//! the link points to is not touched. A file replaced whole is written under a new name in the
//! same folder and renamed over its path.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
#[cfg(unix)]
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Mode of a state file.
#[cfg(unix)]
const FILE_MODE: u32 = 0o600;
/// Mode of a folder made for state files.
#[cfg(unix)]
const DIR_MODE: u32 = 0o700;

/// Make `dir` and the folders missing above it, mode `0700`; folders that exist are left as
/// they are.
pub(crate) fn create_dir(dir: &Path) -> io::Result<()> {
    if dir.as_os_str().is_empty() {
        return Ok(());
    }
    let mut builder = DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    builder.mode(DIR_MODE);
    builder.create(dir)
}

/// Options for a state file: created mode `0600` (when the caller asks to create it), never
/// opened through a symbolic link (`O_NOFOLLOW`), and never waited on (`O_NONBLOCK`: a FIFO
/// planted at the path opens at once, and [`open`] refuses it; on a regular file the flag does
/// nothing). Open with [`open`].
pub(crate) fn options() -> OpenOptions {
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    options
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    options
}

/// Open `path` with `options` (from [`options`]); a symbolic link there is the error of
/// [`link_error`] rather than the system's "too many levels of symbolic links".
pub(crate) fn open(path: &Path, options: &OpenOptions) -> io::Result<File> {
    // Elsewhere `O_NOFOLLOW` is not there to fail: the check before opening is what is left.
    #[cfg(not(unix))]
    refuse_link(path)?;
    let file = options.open(path).map_err(|e| {
        #[cfg(unix)]
        if e.raw_os_error() == Some(libc::ELOOP) && is_link(path) {
            return link_error(path);
        }
        e
    })?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is not a regular file (a FIFO, a device or a folder): stagewise keeps its state in files of its own; move it away (it was not touched)",
                path.display()
            ),
        ));
    }
    Ok(file)
}

/// Refuse a symbolic link at `path`; a missing file, or any other, is fine.
pub(crate) fn refuse_link(path: &Path) -> io::Result<()> {
    if is_link(path) {
        Err(link_error(path))
    } else {
        Ok(())
    }
}

fn is_link(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

/// The error for a state path that is a symbolic link.
pub(crate) fn link_error(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "{} is a symbolic link: stagewise keeps its state in files of its own and never writes through a link; remove the link (what it points to was not touched)",
            path.display()
        ),
    )
}

/// Replace the file at `path` with `bytes`: written to `<name><suffix>.<pid>` beside it (made new, mode
/// `0600`: whatever was at that name, a link or a FIFO, is removed first, never written through),
/// then renamed over `path` (which replaces a link there rather than following it). The folder
/// is made as [`create_dir`] does.
pub(crate) fn replace(path: &Path, suffix: &str, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let folder = path.parent().unwrap_or_else(|| Path::new(""));
    create_dir(folder)?;
    // This process's own: two runners sharing a folder each write their own, and the last
    // rename wins whole.
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(format!("{suffix}.{}", std::process::id()));
    let temporary = path.with_file_name(name);
    let _ = std::fs::remove_file(&temporary);
    let written = open(&temporary, options().write(true).create_new(true))
        .and_then(|mut file| file.write_all(bytes))
        .and_then(|()| std::fs::rename(&temporary, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .expect("stat")
            .permissions()
            .mode()
            & 0o777
    }

    #[test]
    fn folders_and_files_are_private_and_links_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let existing = dir.path().join("existing");
        std::fs::create_dir(&existing).expect("mkdir");
        std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let file = existing.join("a/b/state.json");
        replace(&file, ".tmp", b"one").expect("replace");
        replace(&file, ".tmp", b"two").expect("replace again");
        assert_eq!(std::fs::read(&file).expect("read"), b"two");
        assert_eq!(mode(&file), 0o600);
        assert_eq!(mode(&existing.join("a")), 0o700);
        assert_eq!(mode(&existing.join("a/b")), 0o700);
        assert_eq!(mode(&existing), 0o755, "an existing folder is left alone");
        let names: Vec<_> = std::fs::read_dir(existing.join("a/b"))
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["state.json"], "no temporary file is left");

        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"someone else's").expect("write");
        let link = dir.path().join("state.lock");
        std::os::unix::fs::symlink(&victim, &link).expect("symlink");
        let opened = open(&link, options().read(true).write(true).create(true));
        let err = opened.expect_err("a link is not opened");
        assert!(
            err.to_string()
                .starts_with(&format!("{} is a symbolic link", link.display())),
            "{err}"
        );
        // A FIFO planted at a state path is refused at once, not waited on.
        let fifo = dir.path().join("state.fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("run mkfifo");
        assert!(made.success());
        for options in [
            options().read(true).clone(),
            options().read(true).write(true).create(true).clone(),
        ] {
            let err = open(&fifo, &options).expect_err("a FIFO is not a state file");
            assert!(err.to_string().contains("is not a regular file"), "{err}");
        }
        let err = refuse_link(&link).expect_err("a link is refused");
        assert!(err.to_string().contains("is a symbolic link"), "{err}");
        assert!(refuse_link(&victim).is_ok());
        assert!(refuse_link(&dir.path().join("missing")).is_ok());

        // A link at the temporary name is removed, not written through; one at the path is
        // replaced.
        let temporary = format!("out.json.tmp.{}", std::process::id());
        std::os::unix::fs::symlink(&victim, dir.path().join(temporary)).expect("symlink");
        std::os::unix::fs::symlink(&victim, dir.path().join("out.json")).expect("symlink");
        replace(&dir.path().join("out.json"), ".tmp", b"mine").expect("replace");
        assert_eq!(std::fs::read(&victim).expect("read"), b"someone else's");
        assert_eq!(mode(&dir.path().join("out.json")), 0o600);
    }
}
