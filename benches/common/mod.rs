//! What the bench harnesses share: reaping a child process with its resource usage, and the
//! small formatting helpers of their reports. Each harness includes it with `mod common;`.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

/// Wait for child `pid` and return its exit status and resource usage (`ru_maxrss` is its peak
/// RSS in KiB; `ru_utime` and `ru_stime` its CPU time). `std` reaps without the usage, hence
/// libc.
pub fn wait4(pid: u32) -> io::Result<(ExitStatus, libc::rusage)> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
    let mut status: libc::c_int = 0;
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    loop {
        // SAFETY: `status` and `usage` are valid, writable and outlive the call; `pid` is a
        // child of this process that nothing else reaps.
        let reaped = unsafe { libc::wait4(pid, &mut status, 0, usage.as_mut_ptr()) };
        if reaped == pid {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    // SAFETY: zero is a valid `rusage` (plain integers), and wait4 has filled it in.
    let usage = unsafe { usage.assume_init() };
    Ok((ExitStatus::from_raw(status), usage))
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

/// A progress line on stderr, so the report on stdout stays clean.
pub fn progress(message: &str) {
    eprintln!("[bench] {message}");
}
