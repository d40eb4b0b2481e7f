//! The things the load bench drives: the echo backends directly, wslb, and (when installed)
//! HAProxy and NGINX configured the same way: round robin over the same two `wslb echo`
//! backends, WebSocket tunnel timeouts of an hour, two threads or worker processes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::tls::CertFiles;

/// A child process that is killed and reaped when dropped, also when the bench panics.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM first so NGINX's master takes its workers down with it.
        let _ = Command::new("kill")
            .arg(self.0.id().to_string())
            .stderr(Stdio::null())
            .status();
        for _ in 0..50 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Lines `--ab-config` adds to the `wslb-ab` target's config file.
static AB_CONFIG: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

pub fn add_ab_config(line: &str) {
    let mut c = AB_CONFIG.lock().unwrap();
    c.push_str(line);
    c.push('\n');
}

pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

pub fn wait_listening(addr: SocketAddr) {
    for _ in 0..250 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{addr} never listened");
}

pub fn wslb_bin() -> &'static str {
    env!("CARGO_BIN_EXE_wslb")
}

/// Two `wslb echo` backends, one worker each.
pub fn echo_backends() -> (Vec<SocketAddr>, Vec<Proc>) {
    let mut addrs = Vec::new();
    let mut procs = Vec::new();
    for _ in 0..2 {
        let a = free_addr();
        let c = Command::new(wslb_bin())
            .args(["echo", "--listen", &a.to_string(), "--workers", "1"])
            .stderr(Stdio::null())
            .spawn()
            .expect("starting wslb echo");
        procs.push(Proc(c));
        addrs.push(a);
    }
    for a in &addrs {
        wait_listening(*a);
    }
    (addrs, procs)
}

/// Built by `cargo build --release --example fastwebsockets_relay`.
pub fn pollio_bin() -> PathBuf {
    Path::new(wslb_bin()).with_file_name("examples/fastwebsockets_relay")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Direct,
    Wslb,
    Haproxy,
    Nginx,
    /// examples/fastwebsockets_relay: the relay design wslb did not choose.
    PollIo,
    /// wslb again, started with the environment given by `--ab-env` (A/B experiments).
    WslbAb,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Wslb => "wslb",
            Kind::Haproxy => "haproxy",
            Kind::Nginx => "nginx",
            Kind::PollIo => "pollio",
            Kind::WslbAb => "wslb-ab",
        }
    }

    pub fn installed(self) -> bool {
        match self {
            Kind::Direct | Kind::Wslb | Kind::WslbAb => true,
            Kind::Haproxy => which("haproxy").is_some(),
            Kind::Nginx => which("nginx").is_some(),
            Kind::PollIo => pollio_bin().is_file(),
        }
    }

    /// Whether it can terminate TLS: the echo backends (`Direct`) and the poll-based relay
    /// example speak only plain ws.
    pub fn tls(self) -> bool {
        !matches!(self, Kind::Direct | Kind::PollIo)
    }
}

pub fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
            .map(|d| d.join(cmd))
            .find(|f| f.is_file())
    })
}

/// A running target. `addrs` are where clients connect: the proxy's address, or for
/// `Direct` the backends themselves (clients spread over them as round robin would).
pub struct Target {
    pub kind: Kind,
    pub addrs: Vec<SocketAddr>,
    proc: Option<Proc>,
    _dir: Option<TempDir>,
}

impl Target {
    /// The proxy's processes (NGINX: master and workers), empty for `Direct`.
    pub fn pids(&self) -> Vec<u32> {
        let Some(p) = &self.proc else {
            return Vec::new();
        };
        let root = p.0.id();
        let mut pids = vec![root];
        pids.extend(children(root));
        pids
    }

    /// Reads (user, system) CPU seconds of all the proxy's processes so far; callable from
    /// the load client's thread.
    pub fn cpu_reader(&self) -> impl Fn() -> (f64, f64) + Send + 'static {
        let pids = self.pids();
        move || {
            pids.iter()
                .map(|&p| cpu_seconds(p))
                .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1))
        }
    }

    /// wslb's log file, where its stats lines go.
    pub fn log_path(&self) -> Option<PathBuf> {
        let p = self._dir.as_ref()?.0.join("wslb.log");
        p.exists().then_some(p)
    }

    /// Resident set of all the proxy's processes, in bytes.
    pub fn rss_bytes(&self) -> u64 {
        self.pids().into_iter().map(rss_bytes).sum()
    }
}

/// Starts `kind` in front of `backends`; with `tls`, its listener terminates TLS with that
/// certificate (and speaks only TLS) and it forwards plain ws.
pub fn start(
    kind: Kind,
    backends: &[SocketAddr],
    io: &str,
    ab_env: &[(String, String)],
    tls: Option<&CertFiles>,
) -> Target {
    assert!(tls.is_none() || kind.tls(), "{} cannot do TLS", kind.name());
    let listen = free_addr();
    let (proc, dir) = match kind {
        Kind::Direct => {
            return Target {
                kind,
                addrs: backends.to_vec(),
                proc: None,
                _dir: None,
            };
        }
        Kind::Wslb | Kind::WslbAb => {
            // A stats line every second in the log, to see how SO_REUSEPORT spread the
            // connections over the workers.
            // WSLB_BENCH_PROXY_BIN runs another build as the proxy (flamegraphs/profile.sh
            // uses it for before/after profiles); older builds may not know the stats field.
            // WSLB_BENCH_AB_BIN does the same for the `wslb-ab` target (same-run before/after).
            let var = if kind == Kind::WslbAb {
                "WSLB_BENCH_AB_BIN"
            } else {
                "WSLB_BENCH_PROXY_BIN"
            };
            let other = std::env::var_os(var).map(PathBuf::from);
            let dir = TempDir::new(kind.name());
            let cfg = dir.0.join("wslb.toml");
            // The admin server on a port of its own (0): it is on by default, and a fresh
            // process for the idle scenario runs beside the long-running one. (Builds from
            // WSLB_BENCH_*_BIN get no config file and run with their defaults.)
            let extra = match kind {
                Kind::WslbAb => AB_CONFIG.lock().unwrap().clone(),
                _ => String::new(),
            };
            std::fs::write(
                &cfg,
                format!("stats_interval_secs = 1\n{extra}[admin]\nlisten = \"127.0.0.1:0\"\n"),
            )
            .unwrap();
            let mut args = vec!["run".to_string()];
            if other.is_none() {
                args.extend(["--config".into(), cfg.display().to_string()]);
            }
            args.extend([
                "--listen".into(),
                listen.to_string(),
                "--workers".into(),
                "2".into(),
                "--io-driver".into(),
                io.into(),
            ]);
            for b in backends {
                args.extend(["--backend".into(), b.to_string()]);
            }
            if let Some(t) = tls {
                args.extend(["--tls-cert".into(), t.cert.display().to_string()]);
                args.extend(["--tls-key".into(), t.key.display().to_string()]);
            }
            // Another build gets no config file; if it has an admin server (on by default,
            // on a fixed port), it goes to port 0 too, or the idle scenario's fresh process
            // could not start beside the long-running one.
            if let Some(bin) = &other
                && Command::new(bin)
                    .args(["run", "--help"])
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--admin"))
            {
                args.extend(["--admin".into(), "127.0.0.1:0".into()]);
            }
            let env: &[(String, String)] = if kind == Kind::WslbAb { ab_env } else { &[] };
            let log = std::fs::File::create(dir.0.join("wslb.log")).unwrap();
            let bin = other.unwrap_or_else(|| wslb_bin().into());
            let c = Command::new(bin)
                .args(&args)
                .envs(env.iter().map(|(k, v)| (k, v)))
                .env("NO_COLOR", "1")
                .stderr(log)
                .spawn()
                .expect("starting wslb");
            (Proc(c), Some(dir))
        }
        Kind::PollIo => {
            let list: Vec<String> = backends.iter().map(|b| b.to_string()).collect();
            let c = Command::new(pollio_bin())
                .args([listen.to_string(), list.join(","), "2".into()])
                .stderr(Stdio::null())
                .spawn()
                .expect("starting examples/fastwebsockets_relay");
            (Proc(c), None)
        }
        Kind::Haproxy => {
            let dir = TempDir::new("haproxy");
            let cfg = dir.0.join("haproxy.cfg");
            std::fs::write(&cfg, haproxy_config(listen, backends, tls)).unwrap();
            let c = Command::new(which("haproxy").unwrap())
                .args(["-db", "-f"])
                .arg(&cfg)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting haproxy");
            (Proc(c), Some(dir))
        }
        Kind::Nginx => {
            let dir = TempDir::new("nginx");
            let cfg = dir.0.join("nginx.conf");
            std::fs::write(&cfg, nginx_config(listen, backends, &dir.0, tls)).unwrap();
            let c = Command::new(which("nginx").unwrap())
                .arg("-p")
                .arg(&dir.0)
                .arg("-c")
                .arg(&cfg)
                .args(["-e", "stderr"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting nginx");
            (Proc(c), Some(dir))
        }
    };
    wait_listening(listen);
    Target {
        kind,
        addrs: vec![listen],
        proc: Some(proc),
        _dir: dir,
    }
}

/// HAProxy 2.6 tunnels WebSocket upgrades in `mode http` on its own; `timeout tunnel`
/// governs the connection once upgraded. `maxconn` leaves room for 9,900 proxied
/// connections under the 20,000-descriptor cap (two descriptors each). With TLS, `crt` takes
/// the certificate and key in one file; OpenSSL's defaults otherwise (the client fixes the
/// version, suite and group).
fn haproxy_config(listen: SocketAddr, backends: &[SocketAddr], tls: Option<&CertFiles>) -> String {
    let servers: String = backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("  server s{i} {b}\n"))
        .collect();
    let ssl = tls.map_or(String::new(), |t| {
        format!(" ssl crt {} alpn http/1.1", t.combined.display())
    });
    format!(
        "global\n  nbthread 2\n  cpu-map auto:1/1-2 0-1\n  maxconn 9990\n\
         defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  timeout tunnel 1h\n\
         frontend fe\n  bind {listen}{ssl}\n  default_backend be\n\
         backend be\n  balance roundrobin\n{servers}"
    )
}

/// NGINX 1.22's documented WebSocket proxying: HTTP/1.1 upstream, Upgrade and Connection
/// passed on, read/send timeouts of an hour. Two worker processes, pinned. With TLS,
/// `listen ... ssl` and the certificate and key files, and `ssl_protocols` naming TLS 1.3:
/// before 1.23.4 NGINX's default list stops at TLS 1.2 (the client then gets a
/// protocol_version alert). OpenSSL's defaults otherwise.
fn nginx_config(
    listen: SocketAddr,
    backends: &[SocketAddr],
    dir: &Path,
    tls: Option<&CertFiles>,
) -> String {
    let servers: String = backends
        .iter()
        .map(|b| format!("    server {b};\n"))
        .collect();
    let d = dir.display();
    let ssl = tls.map_or(String::new(), |t| {
        format!(
            " ssl;\n    ssl_protocols TLSv1.2 TLSv1.3;\n    ssl_certificate {};\n    ssl_certificate_key {}",
            t.cert.display(),
            t.key.display()
        )
    });
    format!(
        "daemon off;\nmaster_process on;\nworker_processes 2;\nworker_cpu_affinity auto;\n\
         worker_rlimit_nofile 20000;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 20000; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           upstream be {{\n{servers}  }}\n\
           server {{\n    listen {listen}{ssl};\n    location / {{\n      proxy_pass http://be;\n\
               proxy_http_version 1.1;\n      proxy_set_header Upgrade $http_upgrade;\n\
               proxy_set_header Connection \"upgrade\";\n      proxy_read_timeout 3600s;\n\
               proxy_send_timeout 3600s;\n      proxy_buffering off;\n    }}\n  }}\n}}\n"
    )
}

/// A directory under /tmp removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A new directory for each call: a fresh target for an idle scenario, or a TLS one,
    /// runs beside the long-running target of its kind, and dropping one must not remove
    /// the other's files.
    pub fn new(tag: &str) -> Self {
        static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        // Relaxed: only uniqueness matters, and fetch_add gives that at any ordering.
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("wslb-bench-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn children(pid: u32) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| {
            stat_fields(p).is_some_and(|f| f.get(1).and_then(|s| s.parse().ok()) == Some(pid))
        })
        .collect()
}

/// Fields of /proc/PID/stat from field 3 (state) on.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    Some(after.split(' ').map(str::to_string).collect())
}

/// (user, system) CPU seconds of a process so far: utime and stime, fields 14 and 15 of
/// proc_pid_stat(5), in clock ticks of 1/100 s (sysconf(_SC_CLK_TCK) on Linux).
fn cpu_seconds(pid: u32) -> (f64, f64) {
    let Some(f) = stat_fields(pid) else {
        return (0.0, 0.0);
    };
    (
        f[11].parse::<f64>().unwrap() / 100.0,
        f[12].parse::<f64>().unwrap() / 100.0,
    )
}

fn rss_bytes(pid: u32) -> u64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Kernel memory that grows with sockets: slab (socket and TCP structures) from
/// /proc/meminfo, and TCP buffer pages from /proc/net/sockstat, in bytes.
pub fn kernel_memory() -> (u64, u64) {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let slab = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("Slab:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024;
    let sockstat = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    let pages = sockstat
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .and_then(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.iter()
                .position(|&w| w == "mem")
                .and_then(|i| f.get(i + 1)?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    (slab, pages * 4096)
}

/// The latest stats line (per-worker open and accepted connections) in a wslb log.
pub fn last_stats(log: &Path) -> Option<String> {
    let log = std::fs::read_to_string(log).ok()?;
    let line = log.lines().rev().find(|l| l.contains("stats: "))?;
    Some(line[line.find("stats: ")? + 7..].to_string())
}

/// Machine-wide TCP counters from the TcpExt lines of /proc/net/netstat, in the order of
/// `names` (0 for one the kernel does not have): e.g. ListenOverflows, connections
/// (SYNs and handshake ACKs) dropped because a listener's accept queue was full.
pub fn tcp_ext(names: &[&str]) -> Vec<u64> {
    let netstat = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    // Two lines per group: the field names, then their values.
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(keys), Some(values)) = (lines.next(), lines.next()) else {
        return vec![0; names.len()];
    };
    let fields: Vec<(&str, u64)> = keys
        .split_whitespace()
        .zip(values.split_whitespace())
        .skip(1)
        .map(|(k, v)| (k, v.parse().unwrap_or(0)))
        .collect();
    names
        .iter()
        .map(|n| fields.iter().find(|(k, _)| k == n).map_or(0, |(_, v)| *v))
        .collect()
}
