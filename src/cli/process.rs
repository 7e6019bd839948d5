//! Finding the server a pid file names, and making sure it is one before signalling it.
//!
//! A pid file outlives its server when the server is killed hard; the kernel then hands the
//! pid to some other process. So a pid is only signalled when `/proc/PID` shows a running
//! `snakeway serve`:
//!
//! * the executable: `/proc/PID/exe` must be a file named `snakeway` or named like this very
//!   binary (a binary replaced on disk since the server started shows as `… (deleted)`, which is
//!   still accepted). Where `/proc/PID/exe` may not be read (a process of another user, or one
//!   that is not dumpable), the name in `argv[0]` from `/proc/PID/cmdline` is used instead;
//! * the command: its arguments (`/proc/PID/cmdline`) must include `serve`.
//!
//! This is Linux's `/proc`; where it is not mounted, nothing is signalled.

use std::ffi::OsStr;
use std::io::{ErrorKind, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail};

/// The pid a pid file holds: one decimal number greater than 1 (surrounding whitespace
/// allowed). Reads at most a few bytes, so a huge or endless file is refused, not read.
pub(super) fn read_pid(pid_file: &Path) -> anyhow::Result<i32> {
    const MAX: u64 = 64;
    let shown = pid_file.display();
    let mut bytes = Vec::new();
    std::fs::File::open(pid_file)
        .and_then(|f| f.take(MAX + 1).read_to_end(&mut bytes))
        .map_err(|e| anyhow!("cannot read {shown}: {e} (is the server running?)"))?;
    let text = String::from_utf8_lossy(&bytes);
    if bytes.len() as u64 > MAX {
        bail!("{shown} does not hold a process id: it is longer than {MAX} bytes");
    }
    let trimmed = text.trim();
    match trimmed.parse::<i64>() {
        Ok(pid) if pid > 1 => i32::try_from(pid)
            .map_err(|_| anyhow!("{shown} holds {pid}, which is not a process id")),
        Ok(pid) => bail!(
            "{shown} holds {pid}, which is not a server's process id (it must be greater than 1): \
             refusing to signal it"
        ),
        Err(_) => bail!("{shown} does not hold a process id: {trimmed:?}"),
    }
}

/// Succeeds when `pid` (read from `pid_file`) is a running `snakeway serve`; otherwise says
/// what it is instead and that nothing will be signalled.
pub(super) fn ensure_snakeway_server(pid: i32, pid_file: &Path) -> anyhow::Result<()> {
    ensure_snakeway_server_in(Path::new("/proc"), pid, pid_file)
}

fn ensure_snakeway_server_in(proc: &Path, pid: i32, pid_file: &Path) -> anyhow::Result<()> {
    let shown = pid_file.display();
    if !proc.join("self").exists() {
        bail!(
            "cannot tell whether process {pid} (from {shown}) is a Snakeway server: {} is not \
             mounted; refusing to signal it",
            proc.display()
        );
    }
    let dir = proc.join(pid.to_string());
    let stale = || {
        anyhow!(
            "{shown} names process {pid}, which is not running: the pid file is stale (is the \
             server running?)"
        )
    };
    let cmdline = match std::fs::read(dir.join("cmdline")) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == ErrorKind::NotFound => return Err(stale()),
        Err(e) => bail!(
            "cannot read {}: {e}; refusing to signal it",
            dir.join("cmdline").display()
        ),
    };
    // A zombie has an empty command line: it is not serving anything.
    let args: Vec<&[u8]> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .collect();
    let Some(argv0) = args.first() else {
        return Err(stale());
    };
    let program: PathBuf = match std::fs::read_link(dir.join("exe")) {
        Ok(exe) => exe,
        Err(e) if e.kind() == ErrorKind::NotFound => return Err(stale()),
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {
            PathBuf::from(OsStr::from_bytes(argv0))
        }
        Err(e) => bail!(
            "cannot read {}: {e}; refusing to signal it",
            dir.join("exe").display()
        ),
    };
    if !is_snakeway(&program) {
        bail!(
            "{shown} names process {pid}, which is not a Snakeway server (it runs {}): refusing \
             to signal it; the pid file is stale, remove it",
            program.display()
        );
    }
    if !args.iter().any(|a| *a == b"serve") {
        bail!(
            "{shown} names process {pid}, which is `{}` but not `snakeway serve`: refusing to \
             signal it; the pid file is stale, remove it",
            String::from_utf8_lossy(&cmdline.split(|b| *b == 0).collect::<Vec<_>>().join(&b' '))
                .trim()
        );
    }
    Ok(())
}

/// Whether `program` is a Snakeway binary: named `snakeway`, or named like the running binary
/// (a renamed or versioned install), with the kernel's ` (deleted)` suffix ignored.
fn is_snakeway(program: &Path) -> bool {
    let name = |p: &Path| {
        p.file_name().map(|n| {
            let n = n.as_bytes();
            n.strip_suffix(b" (deleted)").unwrap_or(n).to_vec()
        })
    };
    let Some(theirs) = name(program) else {
        return false;
    };
    theirs == b"snakeway"
        || std::env::current_exe()
            .ok()
            .and_then(|ours| name(&ours))
            .is_some_and(|ours| ours == theirs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake `/proc` holding one process `pid` with `exe` (a symlink) and `cmdline`.
    fn fake_proc(tag: &str, exe: &str, cmdline: &[&str]) -> PathBuf {
        let root = std::env::temp_dir().join(format!("snakeway-proc-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("self")).unwrap();
        let dir = root.join("4242");
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(exe, dir.join("exe")).unwrap();
        let mut bytes = Vec::new();
        for arg in cmdline {
            bytes.extend_from_slice(arg.as_bytes());
            bytes.push(0);
        }
        std::fs::write(dir.join("cmdline"), bytes).unwrap();
        root
    }

    fn check(tag: &str, exe: &str, cmdline: &[&str]) -> anyhow::Result<()> {
        let root = fake_proc(tag, exe, cmdline);
        let result = ensure_snakeway_server_in(&root, 4242, Path::new("snakeway.pid"));
        let _ = std::fs::remove_dir_all(&root);
        result
    }

    #[test]
    fn a_snakeway_server_is_accepted_even_after_its_binary_was_replaced() {
        check(
            "ok",
            "/usr/bin/snakeway",
            &["snakeway", "serve", "-c", "x.toml"],
        )
        .unwrap();
        check(
            "deleted",
            "/usr/bin/snakeway (deleted)",
            &["snakeway", "serve"],
        )
        .unwrap();
    }

    #[test]
    fn another_program_or_another_subcommand_is_refused() {
        let err = check("sleep", "/usr/bin/sleep", &["sleep", "serve"]).unwrap_err();
        assert!(err.to_string().contains("runs /usr/bin/sleep"), "{err}");
        let err = check("status", "/usr/bin/snakeway", &["snakeway", "status"]).unwrap_err();
        assert!(err.to_string().contains("not `snakeway serve`"), "{err}");
    }

    #[test]
    fn a_gone_process_or_a_missing_proc_is_refused() {
        let root = fake_proc("gone", "/usr/bin/snakeway", &["snakeway", "serve"]);
        let err = ensure_snakeway_server_in(&root, 4343, Path::new("snakeway.pid")).unwrap_err();
        assert!(err.to_string().contains("stale"), "{err}");
        let err =
            ensure_snakeway_server_in(&root.join("nothing"), 4242, Path::new("p")).unwrap_err();
        assert!(err.to_string().contains("not mounted"), "{err}");
        let _ = std::fs::remove_dir_all(&root);
    }
}
