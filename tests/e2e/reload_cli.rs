//! `snakeway reload` tells the truth: it checks the configuration before sending anything,
//! prints the epoch the server reports (by SIGHUP and the run-state file, or through
//! `POST /admin/reload`), exits non-zero with the server's reason when the server refuses the
//! configuration, and never signals a process that is not a running `snakeway serve`.

use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::client::get;
use crate::harness::{Server, TestDir, eventually, free_port, run_cli};

const WAIT: Duration = Duration::from_secs(10);

/// A config with a pid file (and `[admin]` on `admin_port` with a token, if given), one
/// listener on an OS-picked port, one more on `extra_listen` if given, and `routes` answering
/// their own path.
fn config(admin_port: Option<u16>, extra_listen: Option<&str>, routes: &[&str]) -> String {
    let mut s = String::from("[server]\nthreads = 1\npid_file = \"snakeway.pid\"\n");
    if let Some(port) = admin_port {
        s.push_str(&format!(
            "\n[admin]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"reload-secret\"\n"
        ));
    }
    s.push_str("\n[[listener]]\nlisten = \"127.0.0.1:0\"\n");
    if let Some(listen) = extra_listen {
        s.push_str(&format!("\n[[listener]]\nlisten = \"{listen}\"\n"));
    }
    for path in routes {
        s.push_str(&format!(
            "\n[[route]]\npath = \"{path}\"\nrespond = {{ status = 200, body = \"{path}\" }}\n"
        ));
    }
    s
}

fn reload(server: &Server) -> Output {
    run_cli(
        &["reload", "-c", server.config.to_str().unwrap()],
        &std::env::temp_dir(),
    )
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The server's run-state file (beside its pid file) as JSON.
fn run_state(server: &Server) -> serde_json::Value {
    let path = server.dir.join("snakeway.pid.state");
    serde_json::from_slice(&std::fs::read(&path).expect("read the run-state file"))
        .expect("the run-state file is JSON")
}

/// Asserts the reload failed, naming `why`, and that the server still serves `/old` and not
/// `/new`.
async fn assert_refused(server: &Server, out: &Output, why: &str) {
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success(),
        "reload succeeded: {}",
        text(&out.stdout)
    );
    assert!(stderr.contains(why), "the reason is not printed: {stderr}");
    assert_eq!(get(server.addr(), "/old").await.status, 200);
    assert_eq!(
        get(server.addr(), "/new").await.status,
        404,
        "part of a refused configuration was applied"
    );
}

#[tokio::test]
async fn reload_by_signal_prints_each_new_epoch() {
    let server = Server::start(&config(None, None, &["/old"])).await;
    assert_eq!(run_state(&server)["epoch"], 1);
    assert_eq!(run_state(&server)["result"], "started");

    server.rewrite_config(&config(None, None, &["/old", "/new"]));
    let out = reload(&server);
    assert!(out.status.success(), "reload failed: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("epoch 2"), "{stdout}");
    assert!(stdout.contains(&format!("pid {}", server.pid)), "{stdout}");
    assert_eq!(get(server.addr(), "/new").await.status, 200);

    let out = reload(&server);
    assert!(out.status.success(), "reload failed: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("epoch 3"),
        "{}",
        text(&out.stdout)
    );
    let state = run_state(&server);
    assert_eq!(
        (state["epoch"].as_u64(), state["reloads"].as_u64()),
        (Some(3), Some(2))
    );
    assert_eq!(state["result"], "reloaded");
    assert_eq!(state["pid"].as_u64(), Some(u64::from(server.pid)));
}

#[tokio::test]
async fn a_config_the_server_refuses_at_build_time_fails_the_reload_by_signal() {
    let server = Server::start(&config(None, None, &["/old"])).await;
    // `config check` accepts a listener on a port in use (it binds nothing); the server
    // cannot bind it and refuses the whole configuration.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().to_string();
    server.rewrite_config(&config(None, Some(&busy), &["/old", "/new"]));
    let out = reload(&server);
    assert_refused(&server, &out, &format!("cannot listen on {busy}")).await;
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("refused") && stderr.contains("epoch 1"),
        "{stderr}"
    );
    let state = run_state(&server);
    assert_eq!(
        (state["result"].as_str(), state["epoch"].as_u64()),
        (Some("refused"), Some(1))
    );

    // Once the port is free the same file loads.
    drop(taken);
    let out = reload(&server);
    assert!(out.status.success(), "reload failed: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("epoch 2"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(get(server.addr(), "/new").await.status, 200);
}

#[tokio::test]
async fn an_invalid_config_is_reported_and_nothing_is_sent() {
    let server = Server::start(&config(None, None, &["/old"])).await;
    let mut bad = config(None, None, &["/old", "/new"]);
    bad.push_str("\n[[route]]\npath = \"/broken\"\nservice = \"nope\"\n");
    server.rewrite_config(&bad);
    let out = reload(&server);
    assert_refused(&server, &out, "route[2].service").await;
    assert!(
        text(&out.stderr).contains("nothing was sent"),
        "{}",
        text(&out.stderr)
    );
    // The server was not asked: no reload attempt recorded or logged.
    assert_eq!(run_state(&server)["reloads"], 0);
    assert_eq!(server.log_count("reload refused"), 0);
}

/// A process that is not Snakeway, killed on drop.
struct Bystander(Child);

impl Drop for Bystander {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_stale_pid_file_naming_another_process_is_refused_and_that_process_lives() {
    let dir = TestDir::new("stale-pid");
    let toml = config(None, None, &["/old"]);
    let config_path = dir.write("snakeway.toml", &toml);
    let mut bystander = Bystander(
        Command::new("sleep")
            .arg("30")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn sleep"),
    );
    let pid = bystander.0.id();
    dir.write("snakeway.pid", format!("{pid}\n"));
    let out = run_cli(&["reload", "-c", config_path.to_str().unwrap()], &dir.path);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "reload of a `sleep` succeeded");
    assert!(
        stderr.contains(&format!("process {pid}, which is not a Snakeway server"))
            && stderr.contains("sleep")
            && stderr.contains("stale"),
        "unclear refusal: {stderr}"
    );
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        bystander.0.try_wait().unwrap().is_none(),
        "the unrelated process was signalled"
    );

    // A pid that is no longer running at all is called stale, too.
    let _ = bystander.0.kill();
    let _ = bystander.0.wait();
    let out = run_cli(&["reload", "-c", config_path.to_str().unwrap()], &dir.path);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not running"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn reload_through_the_admin_api_prints_the_epoch_or_the_refusal() {
    let port = free_port();
    let server = Server::start(&config(Some(port), None, &["/old"])).await;
    server.rewrite_config(&config(Some(port), None, &["/old", "/new"]));
    let out = reload(&server);
    assert!(out.status.success(), "reload failed: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("epoch 2"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(get(server.addr(), "/new").await.status, 200);
    assert!(
        eventually(WAIT, || server.log_count("configuration reloaded") == 1).await,
        "the server did not log the reload"
    );

    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().to_string();
    server.rewrite_config(&config(
        Some(port),
        Some(&busy),
        &["/old", "/new", "/newer"],
    ));
    let out = reload(&server);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "refused reload exited 0");
    assert!(
        stderr.contains(&format!("cannot listen on {busy}")) && stderr.contains("refused"),
        "{stderr}"
    );
    assert_eq!(get(server.addr(), "/newer").await.status, 404);
    assert_eq!(get(server.addr(), "/new").await.status, 200);
    // It went through the admin API: the server says so in its log, and the token was used.
    assert!(server.wait_for_log("reload refused", WAIT).await);
}

#[tokio::test]
async fn a_server_without_the_admin_listener_yet_is_reloaded_by_signal() {
    // The file now has `[admin]`, but the running server started without it.
    let server = Server::start(&config(None, None, &["/old"])).await;
    server.rewrite_config(&config(Some(free_port()), None, &["/old", "/new"]));
    let out = reload(&server);
    assert!(out.status.success(), "reload failed: {}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("instead"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("epoch 2"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(get(server.addr(), "/new").await.status, 200);
}
