//! The command line as a user meets it: `wslb check` (every problem, schema ones
//! included, each with its field and line:column; the file as a path or `-c`/`--config`),
//! its counts in the singular and plural, and `wslb demo`'s `--listen` and `--admin`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

fn wslb() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wslb"))
}

/// A file under target/ (tests write nothing else).
fn file(name: &str, text: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Three schema problems in three sections (a wrong type, an unknown variant, an unknown
/// field) and one semantic one: all four, each with its field and where it is written.
/// Before, `wslb check` stopped at the first schema problem and named no other.
#[test]
fn check_lists_every_problem_with_its_field_and_line_and_column() {
    let path = file(
        "four-problems.toml",
        r#"backends = ["127.0.0.1:9001"]

[limits]
max_frame_bytes = "big"

[health]
mode = "udp"

[[routes]]
path_prefix = "/chat"
backends = ["127.0.0.1:9002"]
colour = "red"

[timeouts]
close_grace_ms = 0
"#,
    );
    let out = wslb().arg("check").arg(&path).output().unwrap();
    let (_, err) = text(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(": 4 problems\n"), "{err}");
    let lines: Vec<&str> = err.lines().skip(1).collect();
    assert_eq!(lines.len(), 4, "{err}");
    let expect = [
        (
            "limits.max_frame_bytes: ",
            "invalid type",
            "(line 4, column 19)",
        ),
        (
            "health.mode: ",
            "unknown variant `udp`",
            "(line 7, column 8)",
        ),
        (
            "routes[0].colour: ",
            "unknown field `colour`",
            "(line 12, column 1)",
        ),
        (
            "timeouts.close_grace_ms: ",
            "must be at least 1 ms",
            "(line 15, column 1)",
        ),
    ];
    for (line, (field, message, at)) in lines.iter().zip(expect) {
        let line = line.trim_start();
        assert!(
            line.starts_with(field) && line.contains(message) && line.ends_with(at),
            "{line:?} is not {field}{message}... {at}\n{err}"
        );
    }
}

/// An unknown field is still an error when it is the only problem (no typo is ignored).
#[test]
fn check_refuses_an_unknown_field_alone() {
    let path = file(
        "typo.toml",
        "backends = [\"127.0.0.1:9001\"]\nbackend = [\"x\"]\n",
    );
    let out = wslb().arg("check").arg(&path).output().unwrap();
    let (_, err) = text(&out);
    assert!(!out.status.success());
    assert!(err.contains(": 1 problem\n"), "singular: {err}");
    assert!(
        err.contains("  backend: unknown field `backend`") && err.contains("(line 2, column 1)\n"),
        "{err}"
    );
}

/// `wslb check FILE`, `-c FILE` and `--config FILE` check the same file; the counts are
/// in the singular for one.
#[test]
fn check_takes_the_file_as_a_path_or_a_flag() {
    let path = file("one.toml", "backends = [\"127.0.0.1:9001\"]\nworkers = 1\n");
    for args in [vec![], vec!["-c"], vec!["--config"]] {
        let out = wslb().arg("check").args(&args).arg(&path).output().unwrap();
        let (out_text, err) = text(&out);
        assert!(out.status.success(), "{args:?}: {err}");
        assert!(
            out_text.contains("ok (listen 127.0.0.1:8080, 1 route, 1 backend, 1 worker)"),
            "{args:?}: {out_text}"
        );
        assert!(
            out_text.contains("path_prefix /, 1 backend, round-robin"),
            "{out_text}"
        );
    }
    let out = wslb().arg("check").output().unwrap();
    assert!(!out.status.success(), "a file is required");
}

/// Every option of `wslb check --help` says what it is for (`--config` had an empty line).
#[test]
fn check_help_describes_every_argument() {
    let out = wslb().args(["check", "--help"]).output().unwrap();
    let (help, _) = text(&out);
    assert!(out.status.success());
    for arg in ["[FILE]", "-c, --config <FILE>"] {
        let line = help
            .lines()
            .find(|l| l.trim_start().starts_with(arg))
            .unwrap_or_else(|| panic!("{arg} missing:\n{help}"));
        assert!(
            line.trim_start()[arg.len()..].trim().len() > 10,
            "{arg} has no help: {line:?}"
        );
    }
}

/// Regression, with the config a new user wrote: a route with its own algorithm under a
/// consistent-hash default was refused over the default's `hash_key`.
#[test]
fn check_accepts_a_route_with_its_own_algorithm_under_a_hashing_default() {
    let path = file(
        "hash-default.toml",
        r#"algorithm = "consistent-hash"
hash_key = "query:room"
backends = ["127.0.0.1:9001", "127.0.0.1:9002"]

[[routes]]
path_prefix = "/live"
algorithm = "least-connections"
backends = ["127.0.0.1:9003"]
"#,
    );
    let out = wslb().arg("check").arg(&path).output().unwrap();
    let (o, err) = text(&out);
    assert!(out.status.success(), "{o}{err}");
    assert!(o.contains("2 routes, 3 backends"), "{o}");
}

/// `wslb demo --listen ADDR --admin ADDR` runs off 8080 and 9091.
#[test]
fn demo_listens_where_it_is_told() {
    let mut child = wslb()
        .args(["demo", "--listen", "127.0.0.1:0", "--admin", ""])
        .env("WSLB_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.starts_with("wslb demo: balancer on "))
        .expect("the demo says where it listens");
    child.kill().unwrap();
    child.wait().unwrap();
    let addr = line["wslb demo: balancer on ws://".len()..]
        .split(' ')
        .next()
        .unwrap();
    assert!(addr.starts_with("127.0.0.1:"), "{line}");
    assert_ne!(addr, "127.0.0.1:8080", "{line}");
}

/// When the demo's port is taken, its error names the flags that move it, which exist.
#[test]
fn demo_on_a_taken_port_names_flags_it_has() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = wslb()
        .args(["demo", "--listen", &addr, "--admin", ""])
        .env("WSLB_LOG", "error")
        .output()
        .unwrap();
    let (_, err) = text(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("already in use"), "{err}");
    assert!(err.contains("--listen and --admin"), "{err}");
    let (help, _) = text(&wslb().args(["demo", "--help"]).output().unwrap());
    assert!(
        help.contains("--listen <ADDR>") && help.contains("--admin <ADDR>"),
        "{help}"
    );
}
