//! What ships beside the binary: `--version` and `--help`, shell completions, the man page,
//! and the systemd unit in `contrib/systemd/` (checked with `systemd-analyze verify`).

use std::process::Command;

use crate::harness::{BIN, TestDir, run_cli};

/// Every subcommand, as `--help` lists it.
const SUBCOMMANDS: [&str; 6] = ["serve", "config", "status", "reload", "completions", "man"];

fn stdout_of(args: &[&str]) -> String {
    let dir = TestDir::new("pkg");
    let out = run_cli(args, &dir.path);
    assert!(
        out.status.success(),
        "snakeway {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// The commit of the checkout the test binary was built from, if it is one.
fn head_commit() -> Option<String> {
    let out = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[test]
fn version_names_the_commit_and_the_build_date() {
    let text = stdout_of(&["--version"]);
    let expected_commit = head_commit().unwrap_or_else(|| "unknown".to_owned());
    assert!(
        text.starts_with(&format!("snakeway {}", env!("CARGO_PKG_VERSION")))
            && text.contains(&format!("commit {expected_commit}")),
        "--version does not name the commit {expected_commit}: {text:?}"
    );
    let date = text
        .split("built ")
        .nth(1)
        .and_then(|rest| rest.get(..10))
        .unwrap_or_else(|| panic!("no build date in {text:?}"));
    let parts: Vec<u32> = date.split('-').filter_map(|p| p.parse().ok()).collect();
    assert!(
        parts.len() == 3
            && parts[0] >= 2024
            && (1..=12).contains(&parts[1])
            && (1..=31).contains(&parts[2]),
        "not a YYYY-MM-DD build date: {date:?}"
    );
}

#[test]
fn help_names_the_log_variable_the_signals_and_config_check() {
    let text = stdout_of(&["--help"]);
    for needle in [
        "SNAKEWAY_LOG",
        "SIGHUP",
        "SIGTERM",
        "SIGINT",
        "shutdown_grace_ms",
        "nginx -t",
    ] {
        assert!(
            text.contains(needle),
            "--help does not mention {needle}:\n{text}"
        );
    }
    for sub in SUBCOMMANDS {
        assert!(text.contains(sub), "--help does not list {sub}:\n{text}");
    }
}

#[test]
fn completions_cover_every_subcommand_in_each_shell() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = stdout_of(&["completions", shell]);
        for sub in SUBCOMMANDS {
            assert!(script.contains(sub), "the {shell} completions lack {sub}");
        }
        assert!(
            script.contains("force"),
            "the {shell} completions lack `config init --force`"
        );
    }
    let dir = TestDir::new("pkg");
    let out = run_cli(&["completions", "tcsh"], &dir.path);
    assert!(!out.status.success(), "an unknown shell was accepted");
}

#[test]
fn bash_completions_load_in_bash() {
    let script = stdout_of(&["completions", "bash"]);
    let dir = TestDir::new("pkg-bash");
    let path = dir.write("snakeway.bash", &script);
    // Sourcing it must define the completion function and register it for `snakeway`.
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("source {} && complete -p snakeway", path.display()))
        .output()
        .expect("run bash");
    let registered = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && registered.contains("snakeway"),
        "bash could not load the completions: {}{}",
        registered,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_man_page_is_roff_listing_the_subcommands() {
    let page = stdout_of(&["man"]);
    assert!(
        page.contains(".TH snakeway 1"),
        "no roff title header:\n{page}"
    );
    for sub in SUBCOMMANDS {
        assert!(
            page.contains(&format!("snakeway\\-{sub}")),
            "the man page lacks {sub}"
        );
    }
    assert!(page.contains("SNAKEWAY_LOG") && page.contains("SIGHUP"));
}

#[test]
fn man_out_dir_writes_a_page_per_command() {
    let dir = TestDir::new("man-pages");
    let out = run_cli(&["man", "--out-dir", "pages"], &dir.path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = String::from_utf8_lossy(&out.stdout);
    for page in ["snakeway.1", "snakeway-reload.1", "snakeway-config-init.1"] {
        let path = dir.join("pages").join(page);
        assert!(path.is_file(), "no {page}; listed:\n{listed}");
        assert!(listed.contains(page), "{page} not listed:\n{listed}");
    }
    let reload = std::fs::read_to_string(dir.join("pages/snakeway-reload.1")).unwrap();
    assert!(
        reload.contains(".TH snakeway-reload 1") && reload.contains("wait"),
        "{reload}"
    );
    let init = std::fs::read_to_string(dir.join("pages/snakeway-config-init.1")).unwrap();
    assert!(init.contains("force"), "{init}");
}

/// `systemd-analyze verify` on `contrib/systemd/snakeway.service`, with `ExecStart` pointing at
/// the binary under test (verify requires the executables to exist). It must pass with no
/// warning at all (unknown keys and bad values are only warnings to systemd).
#[test]
fn the_systemd_unit_verifies() {
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!(
            "note: systemd-analyze is not installed here; contrib/systemd/snakeway.service not verified"
        );
        return;
    };
    assert!(version.status.success());
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/contrib/systemd/snakeway.service"
    ))
    .expect("read the unit");
    for needle in [
        "User=snakeway",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "ProtectSystem=strict",
        "ExecReload=",
        "KillSignal=SIGTERM",
        "TimeoutStopSec=",
    ] {
        assert!(unit.contains(needle), "the unit lacks {needle}");
    }
    assert!(unit.contains("/usr/local/bin/snakeway"));
    let dir = TestDir::new("systemd");
    let path = dir.write(
        "snakeway.service",
        unit.replace("/usr/local/bin/snakeway", BIN),
    );
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("run systemd-analyze verify");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
}

/// The container image's configuration (`contrib/docker/snakeway.toml`, checked by the
/// Dockerfile at build time) checks here too, laid out as in the image.
#[test]
fn the_container_config_checks() {
    let dir = TestDir::new("docker-config");
    let toml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/contrib/docker/snakeway.toml"
    ))
    .expect("read contrib/docker/snakeway.toml");
    let config = dir.write("snakeway.toml", &toml);
    dir.write("public/index.html", "<h1>hello</h1>\n");
    let out = run_cli(
        &["config", "check", "-c", config.to_str().unwrap()],
        &dir.path,
    );
    assert!(
        out.status.success(),
        "contrib/docker/snakeway.toml does not check: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dockerfile = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile"))
        .expect("read the Dockerfile");
    for needle in [
        "COPY contrib/docker/snakeway.toml /etc/snakeway/snakeway.toml",
        "RUN snakeway config check -c /etc/snakeway/snakeway.toml",
        "USER snakeway",
        "STOPSIGNAL SIGTERM",
        "EXPOSE 8080",
    ] {
        assert!(
            dockerfile.contains(needle),
            "the Dockerfile lacks {needle:?}"
        );
    }
}
