//! tuning/tune against a fake /proc/sys tree: verify fails when a setting is off, apply
//! without --write changes nothing, apply --write fixes everything and keeps the old
//! values, revert puts them back.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Tree(PathBuf);

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fake host: the stock values of a Debian 12 kernel.
fn host(tag: &str) -> Tree {
    let dir = std::env::temp_dir().join(format!("wslb-tune-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for (k, v) in [
        ("net/core/somaxconn", "4096"),
        ("net/ipv4/tcp_max_syn_backlog", "2048"),
        ("net/core/netdev_max_backlog", "1000"),
        ("net/ipv4/ip_local_port_range", "32768\t60999"),
        ("net/ipv4/tcp_tw_reuse", "2"),
        ("net/ipv4/tcp_migrate_req", "0"),
        ("fs/file-max", "9223372036854775807"),
        ("fs/nr_open", "1048576"),
        ("net/ipv4/tcp_rmem", "4096\t131072\t6291456"),
        ("net/ipv4/tcp_wmem", "4096\t16384\t4194304"),
        // net.ipv4.tcp_slow_start_after_idle left out: a kernel without it is skipped.
    ] {
        let p = dir.join("sys").join(k);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, format!("{v}\n")).unwrap();
    }
    Tree(dir)
}

fn tune(t: &Tree, args: &[&str]) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tuning/tune");
    Command::new("bash")
        .arg(script)
        .args(args)
        .env("WSLB_SYSCTL_ROOT", t.0.join("sys"))
        .env("WSLB_SYSCTL_D", t.0.join("sysctl.d"))
        .env("WSLB_LIMITS_D", t.0.join("limits.d"))
        .env("WSLB_TUNE_STATE", t.0.join("state"))
        .output()
        .unwrap()
}

fn read(t: &Tree, key: &str) -> String {
    std::fs::read_to_string(t.0.join("sys").join(key.replace('.', "/")))
        .unwrap()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
}

#[test]
fn verify_apply_revert_round_trip() {
    let t = host("roundtrip");
    let v = tune(&t, &["verify"]);
    assert_eq!(v.status.code(), Some(1), "{}", text(&v));
    assert!(
        text(&v).contains("net.core.somaxconn                   4096"),
        "{}",
        text(&v)
    );
    assert!(
        text(&v).contains("missing"),
        "a setting the kernel lacks is reported"
    );

    // Without --write: a diff, and nothing changes.
    let dry = tune(&t, &["apply"]);
    assert!(dry.status.success(), "{}", text(&dry));
    assert!(text(&dry).contains("-net.core.somaxconn = 4096\n+net.core.somaxconn = 65535"));
    assert_eq!(read(&t, "net.core.somaxconn"), "4096");

    let w = tune(&t, &["apply", "--write"]);
    assert!(w.status.success(), "{}", text(&w));
    assert_eq!(read(&t, "net.core.somaxconn"), "65535");
    assert_eq!(read(&t, "net.ipv4.ip_local_port_range"), "1024 65535");
    // Only the default shrinks; a larger max is kept. A huge file-max is left alone.
    assert_eq!(read(&t, "net.ipv4.tcp_rmem"), "4096 16384 6291456");
    assert_eq!(read(&t, "fs.file-max"), "9223372036854775807");
    let conf = std::fs::read_to_string(t.0.join("sysctl.d/90-wslb.conf")).unwrap();
    assert!(conf.contains("net.ipv4.tcp_migrate_req = 1"), "{conf}");
    assert!(t.0.join("limits.d/90-wslb.conf").exists());
    let v = tune(&t, &["verify"]);
    assert!(v.status.success(), "{}", text(&v));

    // A second apply keeps the original saved values.
    assert!(tune(&t, &["apply", "--write"]).status.success());
    let r = tune(&t, &["revert"]);
    assert!(r.status.success(), "{}", text(&r));
    assert_eq!(read(&t, "net.core.somaxconn"), "4096");
    assert_eq!(read(&t, "net.ipv4.ip_local_port_range"), "32768 60999");
    assert_eq!(read(&t, "net.ipv4.tcp_rmem"), "4096 131072 6291456");
    assert!(!t.0.join("sysctl.d/90-wslb.conf").exists());
    assert_eq!(tune(&t, &["verify"]).status.code(), Some(1));
}

#[test]
fn bad_usage_is_refused_without_changes() {
    let t = host("usage");
    let o = tune(&t, &["apply", "--wirte"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert_eq!(read(&t, "net.core.somaxconn"), "4096");
    assert_eq!(tune(&t, &["frobnicate"]).status.code(), Some(2));
}
