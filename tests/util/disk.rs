//! A small filesystem of a test's own under its temp dir, for the state folder: to fill it up
//! (ENOSPC) or make it read-only while `stagewise` keeps its store there.
//!
//! Tests and CI run as root, where `chmod` stops nothing, so the faults are real ones of the
//! filesystem. Two kinds:
//!
//! - [`SmallFs::tmpfs`]: a tmpfs of a few MiB. It fills up, and `mount -o remount,ro` makes it
//!   read-only — but only while no process holds a file on it open for writing (the kernel
//!   refuses the remount, `EBUSY`, while SQLite has its store open), so before a run only.
//! - [`SmallFs::ext4`]: ext4 in an image file on a loop device, mounted `errors=remount-ro`.
//!   [`SmallFs::fail_read_only`] makes it go read-only under a running process, as a disk
//!   error does (`/sys/fs/ext4/<dev>/trigger_fs_error`); [`SmallFs::repair`] unmounts it, runs
//!   `e2fsck` and mounts it again.
//!
//! Mounting needs root. Without it, outside CI, a test skips with a banner saying so; under
//! `CI` a filesystem that cannot be mounted fails the test. Dropping a [`SmallFs`] unmounts it,
//! also when the test panics (its files are first copied to `<mountpoint>.kept`, beside it, for
//! inspection in the kept test dir).

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::Duration;

/// The file [`SmallFs::fill`] writes.
const FILLER: &str = "filler";

/// A mounted filesystem; unmounted when dropped.
pub struct SmallFs {
    mountpoint: PathBuf,
    /// The ext4 image, for [`SmallFs::ext4`].
    image: Option<PathBuf>,
}

/// Whether `CI` says this is a CI run (set, and not empty, `0` or `false`).
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"))
}

/// Whether this process runs as root (its effective uid, from `/proc/self/status`).
pub fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Runs `program args`; its combined output as the error when it fails.
fn sh(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("`{program}` cannot be run: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{program} {}` failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// What to do when a filesystem cannot be mounted: fail under CI, else skip loudly.
fn cannot_mount(what: &str, why: &str) -> Option<SmallFs> {
    let line = "=".repeat(78);
    if under_ci() {
        panic!("{what}: cannot mount it, and CI is set (the disk-fault tests must run): {why}");
    }
    let who = if is_root() {
        "this root process may not mount here (a container without CAP_SYS_ADMIN?)"
    } else {
        "not root: mounting needs root"
    };
    eprintln!(
        "\n{line}\nSKIPPED: {what}: {who}.\n{why}\nThe disk-fault tests did not run; under CI=true this fails.\n{line}\n"
    );
    None
}

/// `path` as `/proc/self/mountinfo` spells it (absolute, no symbolic links).
fn canonical(path: &Path) -> PathBuf {
    fs::canonicalize(path).unwrap_or_else(|e| panic!("canonicalize {}: {e}", path.display()))
}

impl SmallFs {
    /// A tmpfs of `size` (`"4m"`) mounted on `dir` (created). `None`: skipped (see the module).
    pub fn tmpfs(dir: &Path, size: &str) -> Option<SmallFs> {
        fs::create_dir_all(dir).expect("create the mountpoint");
        let what = format!("a {size} tmpfs on {}", dir.display());
        let mountpoint = canonical(dir);
        let target = mountpoint.to_string_lossy().into_owned();
        match sh(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
                &target,
            ],
        ) {
            Ok(()) => Some(SmallFs {
                mountpoint,
                image: None,
            }),
            Err(why) => cannot_mount(&what, &why),
        }
    }

    /// ext4 in an image of `mib` MiB beside `dir` (`<dir>.img`), on a loop device, mounted on
    /// `dir` (created) with `errors=remount-ro`. `None`: skipped (see the module).
    pub fn ext4(dir: &Path, mib: u64) -> Option<SmallFs> {
        fs::create_dir_all(dir).expect("create the mountpoint");
        let mountpoint = canonical(dir);
        let image = mountpoint.with_extension("img");
        let what = format!("ext4 on a loop device at {}", dir.display());
        File::create(&image)
            .and_then(|f| f.set_len(mib << 20))
            .unwrap_or_else(|e| panic!("create {}: {e}", image.display()));
        let img = image.to_string_lossy().into_owned();
        // No blocks reserved for root: the tests run as root and must be able to fill it.
        if let Err(why) = sh("mkfs.ext4", &["-q", "-F", "-m", "0", &img]) {
            return cannot_mount(&what, &why);
        }
        let fs = SmallFs {
            mountpoint,
            image: Some(image),
        };
        match fs.mount_image() {
            Ok(()) => Some(fs),
            Err(why) => {
                // Nothing is mounted: dropping it would try to unmount.
                std::mem::forget(fs);
                cannot_mount(&what, &why)
            }
        }
    }

    fn mount_image(&self) -> Result<(), String> {
        let image = self.image.as_ref().expect("an ext4 image");
        sh(
            "mount",
            &[
                "-t",
                "ext4",
                "-o",
                "loop,errors=remount-ro",
                &image.to_string_lossy(),
                &self.target(),
            ],
        )
    }

    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    fn target(&self) -> String {
        self.mountpoint.to_string_lossy().into_owned()
    }

    /// Writes a filler file until the filesystem says `ENOSPC` (down to single bytes); the
    /// bytes written.
    pub fn fill(&self) -> u64 {
        let path = self.mountpoint.join(FILLER);
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        let mut written = 0u64;
        for size in [1 << 20, 64 << 10, 4 << 10, 512, 1] {
            let chunk = vec![0xA5u8; size];
            loop {
                match file.write(&chunk) {
                    Ok(0) => break,
                    Ok(n) => written += n as u64,
                    Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                    Err(e) => panic!("fill {}: {e}", path.display()),
                }
            }
        }
        written
    }

    /// Removes the filler file: the space is back.
    pub fn free(&self) {
        let path = self.mountpoint.join(FILLER);
        fs::remove_file(&path).unwrap_or_else(|e| panic!("remove {}: {e}", path.display()));
    }

    /// `mount -o remount,ro`: refused by the kernel (`EBUSY`) while a process has a file on it
    /// open for writing.
    pub fn remount_ro(&self) -> Result<(), String> {
        sh("mount", &["-o", "remount,ro", &self.target()])
    }

    /// `mount -o remount,rw`.
    pub fn remount_rw(&self) {
        sh("mount", &["-o", "remount,rw", &self.target()]).expect("remount read-write");
    }

    /// Whether a file can be made on it (false once it is read-only).
    pub fn is_writable(&self) -> bool {
        let probe = self.mountpoint.join(".probe");
        match File::create(&probe) {
            Ok(_) => {
                let _ = fs::remove_file(&probe);
                true
            }
            Err(_) => false,
        }
    }

    /// ext4: an error of the filesystem, which (`errors=remount-ro`) makes it read-only at once
    /// under every process that uses it, open files included. It is synced first, as
    /// `remount,ro` would: what the error aborts is then only what was written since (a few
    /// milliseconds), not the seconds of pages ext4 had yet to write, which would make it a
    /// power cut rather than a disk turning read-only.
    pub fn fail_read_only(&self) {
        sh("sync", &["--file-system", &self.target()]).expect("sync the filesystem");
        let device = self.source();
        let name = device
            .strip_prefix("/dev/")
            .unwrap_or_else(|| panic!("{} is mounted from {device}", self.target()));
        let knob = format!("/sys/fs/ext4/{name}/trigger_fs_error");
        fs::write(&knob, "1").unwrap_or_else(|e| panic!("write {knob}: {e}"));
        assert!(
            !self.is_writable(),
            "{} is still writable after an ext4 error",
            self.target()
        );
    }

    /// ext4, after [`SmallFs::fail_read_only`]: unmount, `e2fsck -fy`, mount again (an ext4 that
    /// had an error cannot be remounted read-write in place).
    pub fn repair(&self) {
        self.unmount().expect("unmount the failed ext4");
        let image = self.image.as_ref().expect("an ext4 image");
        let out = Command::new("e2fsck")
            .args(["-f", "-y"])
            .arg(image)
            .output()
            .expect("run e2fsck");
        // 0: clean; 1: errors corrected (the error the test caused is recorded in the
        // superblock). 4 and up: errors left.
        assert!(
            matches!(out.status.code(), Some(0 | 1)),
            "e2fsck {}: {}\n{}{}",
            image.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self.mount_image().expect("mount the repaired ext4 again");
    }

    /// The device it is mounted from, from `/proc/self/mountinfo`.
    fn source(&self) -> String {
        let info = fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
        let target = self.target();
        info.lines()
            .filter(|l| l.split(' ').nth(4) == Some(target.as_str()))
            .filter_map(|l| l.split(" - ").nth(1))
            .filter_map(|rest| rest.split(' ').nth(1).map(str::to_owned))
            .next_back()
            .unwrap_or_else(|| panic!("{target} is not in /proc/self/mountinfo"))
    }

    /// `umount`, retried for a few seconds while it is busy (a killed child's files closing).
    fn unmount(&self) -> Result<(), String> {
        let mut last = String::new();
        for _ in 0..50 {
            match sh("umount", &[&self.target()]) {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            thread::sleep(Duration::from_millis(100));
        }
        Err(last)
    }

    /// Copies its files to `<mountpoint>.kept` (a failing test keeps its dir for inspection).
    fn keep_copy(&self) {
        let kept = self.mountpoint.with_extension("kept");
        let _ = fs::create_dir_all(&kept);
        if let Ok(entries) = fs::read_dir(&self.mountpoint) {
            for entry in entries.flatten() {
                if entry.file_name() != FILLER {
                    let _ = fs::copy(entry.path(), kept.join(entry.file_name()));
                }
            }
        }
        eprintln!("state folder's files kept in {}", kept.display());
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        if thread::panicking() {
            self.keep_copy();
        }
        if let Err(e) = self.unmount() {
            // Detached now, freed once the last user lets go: the test dir can still go.
            let lazy = sh("umount", &["-l", &self.target()]);
            eprintln!(
                "warning: {} stayed busy ({e}); lazy unmount: {lazy:?}",
                self.target()
            );
        }
    }
}
