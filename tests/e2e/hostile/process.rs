//! Hostile peers: process. A pid file that would make `snakeway reload` signal a process
//! group, init or every process of the user; a symlink planted at the pid file's path; a pid
//! file someone else rewrote.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{BIN, Server, Signal, TestDir, eventually, run_cli};

const WAIT: Duration = Duration::from_secs(5);

/// A config naming `snakeway.pid` as its pid file, serving one respond route.
const SERVED: &str = r#"
[server]
threads = 1
pid_file = "snakeway.pid"
shutdown_grace_ms = 1000

[[listener]]
listen = "127.0.0.1:0"

[[route]]
path = "/"
respond = { status = 200, body = "ok" }
"#;

/// A process in the test's own process group and of the same user: what a `kill(0, ..)` or
/// `kill(-1, ..)` would reach. Killed on drop.
struct Sentinel(Child);

impl Sentinel {
    fn start() -> Self {
        Self(
            Command::new("sleep")
                .arg("30")
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn sleep"),
        )
    }

    fn is_alive(&mut self) -> bool {
        self.0.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `snakeway reload` against a pid file holding `contents`: it must fail, say why, and
/// signal nothing (the sentinel and this test process, which SIGHUP would kill, live on).
fn reload_refuses(contents: &str, why: &str) {
    let dir = TestDir::new("pid-refused");
    let config = dir.write(
        "snakeway.toml",
        "[server]\npid_file = \"snakeway.pid\"\n\n[[listener]]\nlisten = \"127.0.0.1:0\"\n",
    );
    dir.write("snakeway.pid", contents);
    let mut sentinel = Sentinel::start();
    let out = run_cli(&["reload", "-c", config.to_str().unwrap()], &dir.path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "reload with a pid file holding {contents:?} succeeded"
    );
    assert!(
        stderr.contains("snakeway.pid") && stderr.contains(why),
        "unclear refusal for {contents:?}: {stderr}"
    );
    assert!(!stderr.contains("sent SIGHUP"), "{stderr}");
    // A signal is delivered before kill(2) returns to the sender; give a stray one time anyway.
    std::thread::sleep(Duration::from_millis(50));
    assert!(sentinel.is_alive(), "the sentinel process was signalled");
}

#[test]
fn reload_refuses_a_pid_of_minus_one() {
    // kill(-1, SIGHUP) signals every process the user may signal.
    reload_refuses("-1\n", "holds -1");
}

#[test]
fn reload_refuses_a_pid_of_zero() {
    // kill(0, SIGHUP) signals the caller's whole process group.
    reload_refuses("0\n", "holds 0");
}

#[test]
fn reload_refuses_a_pid_of_one() {
    // init: never a snakeway server.
    reload_refuses("1", "must be greater than 1");
}

#[test]
fn reload_refuses_a_pid_file_that_is_not_a_number() {
    reload_refuses("abc\n", "does not hold a process id");
}

#[test]
fn reload_refuses_a_huge_pid_file() {
    reload_refuses(&"9".repeat(1 << 20), "does not hold a process id");
}

/// Serves `SERVED` from `dir` with a symlink planted at the pid path: the server refuses to
/// start, naming the pid file, and writes nothing through the link.
fn serve_refuses_symlinked_pid_file(dir: &TestDir) -> String {
    let config = dir.write("snakeway.toml", SERVED);
    let out = run_cli(&["serve", "-c", config.to_str().unwrap()], &dir.path);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "served with a symlink at the pid path: {stderr}"
    );
    assert!(
        stderr.contains("pid_file") && stderr.contains("symbolic link"),
        "unclear refusal: {stderr}"
    );
    assert!(
        std::fs::symlink_metadata(dir.join("snakeway.pid"))
            .unwrap()
            .file_type()
            .is_symlink(),
        "the planted link was replaced"
    );
    stderr
}

#[test]
fn a_symlink_at_the_pid_path_is_not_written_through() {
    let dir = TestDir::new("pid-symlink");
    let victim = dir.write("victim.txt", "precious\n");
    std::os::unix::fs::symlink(&victim, dir.join("snakeway.pid")).unwrap();
    serve_refuses_symlinked_pid_file(&dir);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
}

#[test]
fn a_dangling_symlink_at_the_pid_path_creates_nothing() {
    let dir = TestDir::new("pid-dangling");
    let target = dir.join("created-by-the-server");
    std::os::unix::fs::symlink(&target, dir.join("snakeway.pid")).unwrap();
    serve_refuses_symlinked_pid_file(&dir);
    assert!(!target.exists(), "the link's target was created");
}

/// Waits until the pid file holds `pid`.
async fn wait_for_pid(path: &Path, pid: u32) {
    assert!(
        eventually(WAIT, || std::fs::read_to_string(path)
            .is_ok_and(|t| t.trim() == pid.to_string()))
        .await,
        "the pid file never held {pid}"
    );
}

#[tokio::test]
async fn the_pid_file_is_removed_after_a_normal_shutdown() {
    let mut server = Server::start(SERVED).await;
    let pid_file = server.dir.join("snakeway.pid");
    wait_for_pid(&pid_file, server.pid).await;
    assert!(
        std::fs::symlink_metadata(&pid_file).unwrap().is_file(),
        "the pid file is a regular file"
    );
    server.signal(Signal::SIGTERM);
    let status = server.wait_exit(WAIT).await.expect("server did not exit");
    assert!(status.success(), "{status}");
    assert!(!pid_file.exists(), "pid file left behind");
    // The temporary file it was written through is gone too.
    let leftovers: Vec<_> = std::fs::read_dir(&server.dir.path)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test]
async fn a_pid_file_rewritten_by_someone_else_is_left_alone_at_exit() {
    let mut server = Server::start(SERVED).await;
    let pid_file = server.dir.join("snakeway.pid");
    wait_for_pid(&pid_file, server.pid).await;
    // Another server (a newer one, started on the same path) took over the pid file.
    std::fs::write(&pid_file, "424242\n").unwrap();
    server.signal(Signal::SIGTERM);
    let status = server.wait_exit(WAIT).await.expect("server did not exit");
    assert!(status.success(), "{status}");
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap(), "424242\n");
}

#[tokio::test]
async fn a_pid_file_from_an_earlier_run_is_replaced() {
    let dir = TestDir::new("pid-stale");
    dir.write("snakeway.pid", "999999\n");
    let server = Server::start_in(dir, SERVED).await;
    wait_for_pid(&server.dir.join("snakeway.pid"), server.pid).await;
}

#[test]
fn sighup_as_soon_as_the_pid_file_appears_reloads_instead_of_killing() {
    // The pid file is what `snakeway reload` acts on: once it exists, SIGHUP must be handled
    // (its default action terminates the process).
    let dir = TestDir::new("pid-early-hup");
    let config = dir.write("snakeway.toml", SERVED);
    crate::harness::set_runtime(&config);
    let pid_file = dir.join("snakeway.pid");
    let mut child = Command::new(BIN)
        .args(["serve", "-c", config.to_str().unwrap()])
        .current_dir(&dir.path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn snakeway serve");
    let guard = KillOnDrop(&mut child);
    let deadline = Instant::now() + WAIT;
    while !pid_file.exists() {
        assert!(Instant::now() < deadline, "no pid file");
        std::thread::yield_now();
    }
    let out = run_cli(&["reload", "-c", config.to_str().unwrap()], &dir.path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        guard.0.try_wait().unwrap().is_none(),
        "the server died of the SIGHUP"
    );
}

/// Kills and reaps a child when the test ends, pass or fail.
struct KillOnDrop<'a>(&'a mut Child);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
