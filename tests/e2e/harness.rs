//! Starting the real `snakeway` binary on loopback sockets, watching its log, signalling it.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use nix::sys::signal::Signal;

/// The server binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_snakeway");

/// The `server.runtime` every server of this test binary runs (`crate::RUNTIME`: `None` in
/// `tests/e2e`, `"per_core"` in `tests/e2e_per_core`). Tests write their configs without it;
/// [`with_runtime`] puts it in every config the harness serves or rewrites.
pub const RUNTIME: Option<&str> = crate::RUNTIME;

/// `toml` with `runtime = RUNTIME` in its `[server]` table (added if missing); `toml` as it
/// is when the config sets a runtime itself, or without [`RUNTIME`].
pub fn with_runtime(toml: &str) -> String {
    let Some(runtime) = RUNTIME else {
        return toml.to_owned();
    };
    let line = format!("runtime = \"{runtime}\"");
    let lines: Vec<&str> = toml.lines().collect();
    let Some(server) = lines.iter().position(|l| l.trim() == "[server]") else {
        return format!("[server]\n{line}\n\n{toml}");
    };
    let table = lines[server + 1..]
        .iter()
        .take_while(|l| !l.trim_start().starts_with('['));
    if table.clone().any(|l| l.trim_start().starts_with("runtime")) {
        return toml.to_owned();
    }
    let mut out = lines[..=server].join("\n");
    out.push('\n');
    out.push_str(&line);
    out.push('\n');
    out.push_str(&lines[server + 1..].join("\n"));
    out.push('\n');
    out
}

/// Rewrites the config file at `path` [`with_runtime`].
pub fn set_runtime(path: &Path) {
    if RUNTIME.is_some() {
        let toml = std::fs::read_to_string(path).expect("read config");
        std::fs::write(path, with_runtime(&toml)).expect("write config");
    }
}

/// A directory under the system temp dir, unique per test, removed on drop.
pub struct TestDir {
    pub path: PathBuf,
}

impl TestDir {
    pub fn new(tag: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("snakeway-e2e-{}-{n}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create test dir");
        Self { path }
    }

    /// Writes `contents` to `rel` (creating parent directories) and returns the full path.
    pub fn write(&self, rel: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("create parent dir");
        }
        std::fs::write(&p, contents).expect("write test file");
        p
    }

    pub fn join(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The servers' cache home (`XDG_CACHE_HOME`, where the WASM compilation cache goes by default):
/// shared by the tests of one run, so a module compiled by one test's server loads from the
/// cache in the next, and never the developer's own `~/.cache`.
const CACHE_HOME: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/e2e-cache-home");

/// Runs `snakeway ARGS` to completion (for the CLI subcommands), with a 30 s limit.
pub fn run_cli(args: &[&str], cwd: &Path) -> Output {
    if let ["serve", "-c", config, ..] = args {
        set_runtime(&cwd.join(config));
    }
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .env("XDG_CACHE_HOME", CACHE_HOME)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn snakeway");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("snakeway {args:?} did not finish within 30 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    }
}

/// A free loopback port, for a config that must name a port before its server starts.
///
/// Picked below the kernel's ephemeral range: a port released there cannot become the local
/// end of some outgoing connection before the server binds it, as a port the kernel handed
/// out for `:0` can (a test failed with "address already in use" that way). Each pick of this
/// process is a different port (a counter, offset by the pid so that test binaries side by
/// side start apart), checked free by binding it.
pub fn free_port() -> u16 {
    static PICKS: AtomicUsize = AtomicUsize::new(0);
    const LOW: usize = 10_000;
    let span = ephemeral_low().saturating_sub(LOW).max(1_000);
    let offset = std::process::id() as usize * 7_919;
    for _ in 0..span {
        let n = PICKS.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(LOW + (offset + n) % span).expect("below the ephemeral range");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between {LOW} and the ephemeral range");
}

/// The first port of the kernel's ephemeral range (32768 when it cannot be read).
fn ephemeral_low() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// A running `snakeway serve`.
pub struct Server {
    child: Child,
    /// The listeners' addresses, in config order, as logged at start.
    pub addrs: Vec<SocketAddr>,
    pub pid: u32,
    pub config: PathBuf,
    logs: Arc<Mutex<Vec<String>>>,
    // Dropped after `child` is killed (see `Drop`).
    pub dir: TestDir,
}

impl Server {
    /// Writes `toml` as `snakeway.toml` into a fresh directory and serves it.
    pub async fn start(toml: &str) -> Server {
        Self::start_in(TestDir::new("srv"), toml).await
    }

    /// Writes `toml` as `snakeway.toml` into `dir` (which may hold certificates etc.) and serves
    /// it, waiting for one `listening` line per `[[listener]]` in `toml`.
    pub async fn start_in(dir: TestDir, toml: &str) -> Server {
        let config = dir.write("snakeway.toml", toml);
        let n = count_listeners(toml);
        Self::start_file(dir, config, n).await
    }

    /// Serves the config file `config`, waiting for `listeners` `listening` lines (≤ 10 s).
    pub async fn start_file(dir: TestDir, config: PathBuf, listeners: usize) -> Server {
        Self::start_file_logging(dir, config, listeners, "info").await
    }

    /// [`Server::start`] with `SNAKEWAY_LOG=level`.
    pub async fn start_logging(toml: &str, level: &str) -> Server {
        let dir = TestDir::new("srv");
        let config = dir.write("snakeway.toml", toml);
        let n = count_listeners(toml);
        Self::start_file_logging(dir, config, n, level).await
    }

    /// [`Server::start_file`] with `SNAKEWAY_LOG=level`.
    pub async fn start_file_logging(
        dir: TestDir,
        config: PathBuf,
        listeners: usize,
        level: &str,
    ) -> Server {
        set_runtime(&config);
        let mut child = Command::new(BIN)
            .arg("serve")
            .arg("-c")
            .arg(&config)
            .current_dir(&dir.path)
            .env("XDG_CACHE_HOME", CACHE_HOME)
            .env("SNAKEWAY_LOG", level)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn snakeway serve");
        let logs = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            Box::new(child.stderr.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        ] {
            let logs = logs.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(pipe);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    match reader.read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let s = String::from_utf8_lossy(&line).trim_end().to_owned();
                            logs.lock().unwrap().push(s);
                        }
                    }
                }
            });
        }
        let pid = child.id();
        let mut server = Server {
            child,
            addrs: Vec::new(),
            pid,
            config,
            logs,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // `snakeway started` comes once the signal handlers are installed: a test may
            // signal the server as soon as this returns.
            let addrs = server.listening_addrs();
            if addrs.len() >= listeners && server.log_text().contains("snakeway started") {
                server.addrs = addrs;
                break;
            }
            if let Some(status) = server.child.try_wait().unwrap() {
                tokio::time::sleep(Duration::from_millis(50)).await;
                panic!(
                    "snakeway serve exited early ({status}); log:\n{}",
                    server.log_text()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "snakeway serve did not log {listeners} listening line(s) and `snakeway started` within 10 s; log:\n{}",
                    server.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server
    }

    /// The address of the first listener.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Every `addr=` of every `listening` line logged so far, in order.
    pub fn listening_addrs(&self) -> Vec<SocketAddr> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("listening"))
            .filter_map(|l| parse_addr(l))
            .collect()
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    pub fn log_text(&self) -> String {
        self.log_lines().join("\n")
    }

    /// How many log lines contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits until some log line contains `needle`.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        self.wait_for_log_count(needle, 1, timeout).await
    }

    /// Waits until at least `n` log lines contain `needle`.
    pub async fn wait_for_log_count(&self, needle: &str, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log_count(needle) >= n {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn signal(&self, signal: Signal) {
        SIGNALS.lock().unwrap().push(format!(
            "{:?} {signal} -> pid {}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default(),
            self.pid
        ));
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid as i32), signal)
            .expect("kill(2)");
    }

    /// Rewrites the config file (the server reads it on the next reload).
    pub fn rewrite_config(&self, toml: &str) {
        std::fs::write(&self.config, with_runtime(toml)).expect("rewrite config");
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Peak resident set size of the server process (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let lines = self.log_lines();
            let tail = &lines[lines.len().saturating_sub(60)..];
            eprintln!(
                "---- snakeway log (last {} lines) ----\n{}\n----",
                tail.len(),
                tail.join("\n")
            );
            eprintln!(
                "server pid {}; signals sent by this test binary so far:\n{}",
                self.pid,
                SIGNALS.lock().unwrap().join("\n")
            );
        }
    }
}

/// Every signal the harness sent, for diagnosing failures (tests run in parallel).
static SIGNALS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn count_listeners(toml: &str) -> usize {
    toml.lines().filter(|l| l.trim() == "[[listener]]").count()
}

/// `addr=127.0.0.1:41234` in a log line.
pub fn parse_addr(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("addr=")? + 5..];
    let end = rest
        .find(|c: char| c.is_whitespace() || c == ',' || c == '"')
        .unwrap_or(rest.len());
    rest[..end].trim_matches('"').parse().ok()
}

/// Waits until `f` returns true, polling every 10 ms.
pub async fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
