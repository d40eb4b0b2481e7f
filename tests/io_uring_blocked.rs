//! The automatic epoll fallback, for real: `wslb run --io-driver auto` in a child process
//! whose seccomp filter makes io_uring_setup(2) fail with EPERM, as Docker's default
//! profile does. The log must say so, and traffic must flow.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use common::*;

/// Installs a seccomp filter: io_uring_setup -> EPERM, everything else allowed.
fn block_io_uring() -> std::io::Result<()> {
    // Classic BPF over `struct seccomp_data` (nr is the u32 at offset 0).
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const RET_ERRNO: u32 = 0x0005_0000; // SECCOMP_RET_ERRNO
    const RET_ALLOW: u32 = 0x7fff_0000; // SECCOMP_RET_ALLOW
    let f = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let filter = [
        f(LD_W_ABS, 0, 0, 0),
        f(JEQ_K, 0, 1, libc::SYS_io_uring_setup as u32),
        f(RET_K, 0, 0, RET_ERRNO | libc::EPERM as u32),
        f(RET_K, 0, 0, RET_ALLOW),
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut _,
    };
    // SAFETY: runs in the forked child before exec; prctl only reads `prog`, which outlives
    // the calls.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::prctl(
                libc::PR_SET_SECCOMP,
                2, /* SECCOMP_MODE_FILTER */
                &prog as *const _,
            ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[test]
fn auto_falls_back_to_epoll_and_says_so() {
    let e = echo();
    let port = dead_addr().port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wslb"));
    cmd.args([
        "run",
        "--admin",
        "",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--backend",
        &e.local_addr.to_string(),
    ])
    .args(["--workers", "2", "--io-driver", "auto"])
    .env("WSLB_LOG", "info")
    .stderr(Stdio::piped());
    // SAFETY: block_io_uring only calls prctl, which is async-signal-safe.
    unsafe { cmd.pre_exec(block_io_uring) };
    let mut child = cmd.spawn().unwrap();
    let mut log = String::new();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        log.push_str(&line);
        log.push('\n');
        if line.contains("balancing") || line.starts_with("wslb: ") {
            break;
        }
    }
    let result = std::panic::catch_unwind(|| {
        assert!(log.contains("io_uring unavailable"), "{log}");
        assert!(log.contains("falling back to epoll"), "{log}");
        assert!(log.contains("io driver Epoll"), "{log}");
        assert!(!log.contains("io driver IoUring"), "{log}");
        let mut c = Peer::connect(format!("127.0.0.1:{port}").parse().unwrap());
        assert_echo(&mut c, 1, b"through epoll");
    });
    let _ = child.kill();
    let _ = child.wait();
    result.unwrap();

    // And `--io-driver io-uring` refuses to start there instead of falling back.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wslb"));
    cmd.args([
        "run",
        "--admin",
        "",
        "--listen",
        "127.0.0.1:0",
        "--backend",
        "127.0.0.1:9",
        "--io-driver",
        "io-uring",
    ]);
    unsafe { cmd.pre_exec(block_io_uring) };
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot start an io_uring runtime"), "{err}");
}
