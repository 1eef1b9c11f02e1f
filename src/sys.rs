//! The few Unix calls std does not offer: who this process and a socket
//! peer are, dropping a setgid privilege, and syncing a file system.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

/// True when the program runs set-user-id or set-group-id (installed
/// `chmod 2755` so any local user can drop mail into the spool): it must
/// then trust nothing the caller chose, such as a config path.
pub fn is_privileged() -> bool {
    // SAFETY: these calls cannot fail and touch no memory.
    unsafe { libc::getuid() != libc::geteuid() || libc::getgid() != libc::getegid() }
}

/// Gives up a set-user-id or set-group-id privilege for good (real,
/// effective and saved ids), for the commands that do not need it.
pub fn drop_privileges() -> io::Result<()> {
    // SAFETY: plain system calls on integers.
    unsafe {
        let (gid, uid) = (libc::getgid(), libc::getuid());
        if libc::setresgid(gid, gid, gid) != 0 || libc::setresuid(uid, uid, uid) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Time since boot, counting time suspended (`CLOCK_BOOTTIME`), which
/// `Instant` (`CLOCK_MONOTONIC`) does not: a queue's ages must include the
/// hours a laptop or a paused VM slept. Never steps with the wall clock.
pub fn boot_time() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } == 0;
    if !ok {
        // Only on kernels older than 2.6.39; the monotonic clock is next best.
        // SAFETY: as above.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    }
    std::time::Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// The user who ran the program, whatever privilege it was installed with.
pub fn real_uid() -> u32 {
    // SAFETY: cannot fail.
    unsafe { libc::getuid() }
}

/// The user whose rights the program uses now.
pub fn effective_uid() -> u32 {
    // SAFETY: cannot fail.
    unsafe { libc::geteuid() }
}

/// The login name of `uid` from the password database; `None` when it has
/// no entry.
pub fn user_name(uid: u32) -> io::Result<Option<String>> {
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: `pwd` and `buf` outlive the call; getpwuid_r writes the
        // strings it points `pwd` at into `buf` only.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let rc = unsafe {
            libc::getpwuid_r(
                uid,
                &mut pwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut found,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        if found.is_null() || pwd.pw_name.is_null() {
            return Ok(None);
        }
        // SAFETY: a non-null pw_name is a NUL-terminated string in `buf`.
        let name = unsafe { CStr::from_ptr(pwd.pw_name) };
        return Ok(Some(name.to_string_lossy().into_owned()));
    }
}

/// Flushes the whole file system `file` lives on, directory entries
/// included: what makes a rename durable when the directory cannot be
/// opened to fsync it (a write-only drop directory).
pub fn syncfs(file: &File) -> io::Result<()> {
    // SAFETY: the descriptor is open for the duration of the call.
    if unsafe { libc::syncfs(file.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Renames `from` to `to` unless `to` exists (`EEXIST` then): a rename
/// that can never replace a queued message. Where the file system lacks
/// `RENAME_NOREPLACE`, a hard link (which never replaces either) and an
/// unlink of the old name do the same in two steps.
pub fn rename_noreplace(from: &std::path::Path, to: &std::path::Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let cstr = |p: &std::path::Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))
    };
    let (f, t) = (cstr(from)?, cstr(to)?);
    // SAFETY: both strings are NUL-terminated and live across the call.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOSYS) => {
            std::fs::hard_link(from, to)?;
            std::fs::remove_file(from)
        }
        _ => Err(e),
    }
}

/// The soft limit on open files of this process (`RLIMIT_NOFILE`);
/// 1024, the usual default, when it cannot be read.
pub fn open_files_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    limit.rlim_cur
}

/// The user id of the process at the other end of a Unix socket, as the
/// kernel saw it at connect time (it cannot be forged by the peer).
pub fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// The machine's host name, or `localhost` when it cannot be read.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    #[test]
    fn boot_time_moves_forward_with_elapsed_time() {
        let a = super::boot_time();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let b = super::boot_time();
        assert!(b >= a + std::time::Duration::from_millis(20), "{a:?} {b:?}");
    }
}
