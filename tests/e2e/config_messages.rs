//! What `snakeway config check` and `snakeway serve` tell a person about a bad configuration:
//! values spelt as in the config, "did you mean" for misspelt names, TLS failures as
//! sentences, a config with no listener refused, and a log file whose directory is missing
//! refused with the command that fixes it.

use std::time::Duration;

use crate::harness::{BIN, TestDir, run_cli};
use crate::pki::Ca;

/// `config check -c NAME` of `toml` written to `dir`: (success, stderr).
fn check(dir: &TestDir, name: &str, toml: &str) -> (bool, String) {
    let file = dir.write(name, toml);
    let out = run_cli(
        &["config", "check", "-c", file.to_str().unwrap()],
        &dir.path,
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The stderr line for the problem at `key`, or a panic showing all of them.
fn line<'a>(stderr: &'a str, key: &str) -> &'a str {
    let needle = format!(": {key}: ");
    stderr
        .lines()
        .find(|l| l.contains(&needle))
        .unwrap_or_else(|| panic!("no problem at {key}:\n{stderr}"))
}

/// `serve` of the config at `file`: it must exit (non-zero) within 10 s; its stderr.
fn serve_refused(dir: &TestDir, file: &std::path::Path) -> String {
    let mut child = std::process::Command::new(BIN)
        .args(["serve", "-c", file.to_str().unwrap()])
        .current_dir(&dir.path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve kept running on a config it should refuse");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        !status.success(),
        "serve exited 0 on a config it should refuse"
    );
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    err
}

const ROUTE: &str = "[[route]]\npath = \"/\"\nrespond = { status = 200 }\n";

#[test]
fn a_config_without_listeners_is_refused_by_check_and_serve() {
    let dir = TestDir::new("no-listener");
    for (name, toml) in [("empty.toml", ""), ("routes-only.toml", ROUTE)] {
        let (ok, err) = check(&dir, name, toml);
        assert!(!ok, "{name}: a config without listeners passed the check");
        let l = line(&err, "listener");
        assert!(
            l.contains("no [[listener]]") && l.contains("listen = \"127.0.0.1:8080\""),
            "{l}"
        );
        let err = serve_refused(&dir, &dir.join(name));
        assert!(err.contains("no [[listener]]"), "{err}");
    }
}

#[test]
fn misspelt_keys_names_and_values_get_a_suggestion() {
    let dir = TestDir::new("did-you-mean");
    let (ok, err) = check(
        &dir,
        "snakeway.toml",
        "[[listener]]\nlisten = \"127.0.0.1:0\"\n\n\
         [[service]]\nname = \"api\"\nupstream = [{ url = \"http://127.0.0.1:1\" }]\n\n\
         [[service]]\nname = \"app\"\nstrategy = \"least_request\"\n\
         upstreams = [{ url = \"http://127.0.0.1:1\", wieght = 2 }]\n\n\
         [[service]]\nname = \"web\"\nstrategy = \"LeastRequests\"\n\
         upstreams = [{ url = \"http://127.0.0.1:1\" }]\n\n\
         [[route]]\npath = \"/\"\nservice = \"ap1\"\n\n\
         [[device]]\ntype = \"structured_loging\"\n",
    );
    assert!(!ok);
    assert!(
        line(&err, "service[0].upstream")
            .contains("unknown field `upstream`; did you mean `upstreams`?"),
        "{err}"
    );
    assert!(line(&err, "service[1].upstreams[0].wieght").contains("did you mean `weight`?"));
    assert!(line(&err, "route[0].service").contains("no service named \"ap1\"; did you mean `"));
    assert!(line(&err, "device[0].type").contains("did you mean `structured_logging`?"));
    // A Rust-style spelling of a value is pointed at the config's spelling.
    let l = line(&err, "service[2].strategy");
    assert!(
        l.contains("unknown value \"LeastRequests\"; did you mean `least_requests`?"),
        "{l}"
    );
    // Something far from every choice gets the list without a guess.
    let (_, err) = check(
        &dir,
        "far.toml",
        "[[listener]]\nlisten = \"127.0.0.1:0\"\ncolour = \"blue\"\n",
    );
    let l = line(&err, "listener[0].colour");
    assert!(
        !l.contains("did you mean") && l.contains("expected one of `name`"),
        "{l}"
    );
}

#[test]
fn tls_failures_are_sentences() {
    let dir = TestDir::new("tls-messages");
    let ca = Ca::new();
    let a = ca.leaf(&["a.test"]);
    let b = ca.leaf(&["b.test"]);
    dir.write("a.pem", &a.cert_pem);
    dir.write("a.key", &a.key_pem);
    dir.write("b.key", &b.key_pem);
    dir.write("empty.pem", "not PEM at all\n");
    dir.write("open.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n");
    let tls = |cert: &str, key: &str| {
        format!(
            "[[listener]]\nlisten = \"127.0.0.1:0\"\n[listener.tls]\ncert = \"{cert}\"\nkey = \"{key}\"\n{ROUTE}"
        )
    };

    let (ok, err) = check(&dir, "good.toml", &tls("a.pem", "a.key"));
    assert!(ok, "{err}");

    let cases = [
        (
            "mismatch.toml",
            tls("a.pem", "b.key"),
            "does not match the certificate",
        ),
        (
            "no-cert.toml",
            tls("a.key", "a.key"),
            "the file holds no PEM certificate",
        ),
        (
            "no-key.toml",
            tls("a.pem", "a.pem"),
            "the file holds no PEM private key",
        ),
        (
            "garbage.toml",
            tls("empty.pem", "a.key"),
            "the file holds no PEM certificate",
        ),
        (
            "unclosed.toml",
            tls("open.pem", "a.key"),
            "a PEM block is not closed",
        ),
    ];
    for (name, toml, expected) in cases {
        let (ok, err) = check(&dir, name, &toml);
        assert!(!ok, "{name} passed the check");
        let l = line(&err, "listener[0].tls");
        assert!(l.contains(expected), "{name}: {l}");
        for internal in [
            "KeyMismatch",
            "NoItemsFound",
            "MissingSectionEnd",
            "InconsistentKeys",
        ] {
            assert!(!l.contains(internal), "{name}: {l}");
        }
    }
    // A CA file for https upstreams is read the same way.
    let (ok, err) = check(
        &dir,
        "ca.toml",
        &format!(
            "[[listener]]\nlisten = \"127.0.0.1:0\"\n{ROUTE}\n[[service]]\nname = \"s\"\n\
             ca_file = \"a.key\"\nupstreams = [{{ url = \"https://a.test\" }}]\n"
        ),
    );
    assert!(!ok, "a CA file without certificates passed the check");
    let l = line(&err, "service[0]");
    assert!(l.contains("the file holds no PEM certificate"), "{l}");
    // The mismatch names both files.
    let (_, err) = check(&dir, "mismatch.toml", &tls("a.pem", "b.key"));
    let l = line(&err, "listener[0].tls");
    assert!(l.contains("b.key") && l.contains("a.pem"), "{l}");
}

#[test]
fn a_log_file_in_a_missing_directory_is_refused_with_the_command_to_fix_it() {
    let dir = TestDir::new("log-dir");
    let toml = format!(
        "[[listener]]\nlisten = \"127.0.0.1:0\"\n{ROUTE}\n\
         [[device]]\ntype = \"structured_logging\"\noutput = \"logs/access.log\"\n"
    );
    let (ok, err) = check(&dir, "snakeway.toml", &toml);
    assert!(!ok, "a log file in a missing directory passed the check");
    let logs = dir.join("logs");
    let l = line(&err, "device[0].output");
    assert!(
        l.contains(&format!("the directory {} does not exist", logs.display()))
            && l.contains(&format!("mkdir -p {}", logs.display())),
        "{l}"
    );
    let err = serve_refused(&dir, &dir.join("snakeway.toml"));
    assert!(
        err.contains(&format!("mkdir -p {}", logs.display())),
        "{err}"
    );
    assert!(
        !logs.exists(),
        "neither check nor serve creates the directory"
    );

    // Doing what the message says is enough.
    std::fs::create_dir(&logs).unwrap();
    let (ok, err) = check(&dir, "snakeway.toml", &toml);
    assert!(ok, "{err}");
}
