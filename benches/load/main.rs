//! The load bench: wslb against its backends directly and against HAProxy and NGINX (when
//! installed), configured equivalently, under identical load, interleaved over rounds.
//!
//!   cargo bench --bench load -- [--scenarios all] [--targets direct,wslb,haproxy,nginx]
//!                                [--rounds 3] [--secs 5] [--idle-conns 9900] [--install-peers]
//!
//! Scenarios (names for --scenarios, comma-separated):
//!   tput-100x64, tput-1000x64, tput-100x16k  closed loop: msg/s and proxy CPU per message
//!   latency      100 conns x 100 msg/s of 64 B, p50/p99/p999 from the scheduled send time,
//!                and proxy CPU per message
//!   latency-1000 the same at 1,000 conns x 10 msg/s
//!   light        light traffic at scale: 9,900 conns x 2 msg/s of 64 B (as latency)
//!   handshake    50 concurrent connect-upgrade-close loops: handshakes/s
//!   idle         hold N upgraded connections, each used once: RSS and kernel memory per conn
//!   idle-busy    the same, but each connection first echoes 64 KiB (more than a relay
//!                buffer, so the relay reads mid-frame) and then idles
//!   wss-handshake-ecdsa, wss-handshake-rsa
//!                the proxy terminates TLS: 50 concurrent connect-TLS-upgrade-close loops,
//!                full handshakes only (the client never resumes), ECDSA P-256 or RSA 2048
//!                leaf: handshakes/s and per proxy CPU-second
//!   wss-tput-100x64, wss-tput-100x16k   closed loop over wss (ECDSA leaf)
//!   wss-idle     hold N wss connections, each used once (ECDSA leaf): RSS and kernel
//!                memory per conn
//!   soak         (runs alone) minutes of checked echo traffic while backends are killed,
//!                reloaded in and out and wslb is replaced by a takeover: see soak/mod.rs
//!                (`--scenarios soak [--minutes 10] [--connections 9900] [--seed N]`)
//!   storm        reconnect storm: N connections (--idle-conns) up and each used once, then
//!                all dropped at once (RST) and all reconnecting concurrently, each with one
//!                echo: time until all are back, p50/p99 per connection, failures, and
//!                handshakes per proxy CPU-second
//!   (`wss` runs all five; `all` includes them.) Every proxy serves the same certificate,
//!   made at start by a test CA the client trusts (tls.rs); `direct` cannot do TLS and is
//!   n/a there. The client offers one version, suite and group (tls::CLIENT_SUMMARY).
//!
//! Every echoed payload is compared byte for byte; a mismatch panics. Each round runs every
//! scenario against every target in turn, starting one target later each round; the table gives medians over rounds and ratios
//! measured in this run only. `--install-peers` runs `apt-get install -y haproxy nginx`.
//! `pollio` (examples/fastwebsockets_relay, build it first) is the relay design not chosen.
//! `--ab-env K=V` (repeatable) adds a target `wslb-ab`: wslb started with that environment,
//! for A/B runs of a change behind an environment switch. `--targets ...,wslb-ab` with
//! `WSLB_BENCH_AB_BIN=/path/to/other/wslb` runs another build as `wslb-ab` (before/after).
//! `--ab-config 'TOML line'` (repeatable) adds that line to `wslb-ab`'s config file, ahead of
//! its tables (so `limits.recv_ring_buffers = 0` or `defer_accept = false`): A/B runs of one
//! build with a feature's setting on and off.

mod client;
mod soak;
mod targets;
mod tls;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use client::Connect;
use targets::{Kind, Target};
use tls::KeyKind;

struct Args {
    scenarios: Vec<Scenario>,
    targets: Vec<Kind>,
    rounds: usize,
    secs: f64,
    idle_conns: usize,
    io: String,
    install_peers: bool,
    /// Environment for the `wslb-ab` target.
    ab_env: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Scenario {
    Tput {
        conns: usize,
        size: usize,
    },
    /// Paced: `conns` connections, each sending `rate` 64 B messages per second (staggered),
    /// each waiting for its echo: latency from the scheduled send, and proxy CPU per message.
    Paced {
        conns: usize,
        rate: u32,
    },
    Handshake,
    /// Idle connections; `busy`: each first echoed a 64 KiB message, else 32 bytes.
    Idle {
        busy: bool,
    },
    /// Closed loop over wss: the proxy terminates TLS (ECDSA leaf) and forwards plain ws.
    WssTput {
        conns: usize,
        size: usize,
    },
    /// wss handshakes with a leaf of this key kind, full handshakes only.
    WssHandshake(KeyKind),
    /// Idle wss connections (ECDSA leaf), each first echoed 32 bytes.
    WssIdle,
    /// Reconnect storm: `--idle-conns` connections dropped at once and all reconnecting
    /// concurrently (client::storm).
    Storm,
}

impl Scenario {
    /// The paced latency run: 100 connections x 100 messages per second.
    const LATENCY: Scenario = Scenario::Paced {
        conns: 100,
        rate: 100,
    };
}

/// The message each idle-busy connection echoes before it idles: larger than the relay
/// buffers (16 KiB, growing to at most 64 KiB by default) with its header.
const IDLE_BUSY_BYTES: usize = 64 << 10;

impl Scenario {
    fn all() -> Vec<Scenario> {
        vec![
            Scenario::Tput {
                conns: 100,
                size: 64,
            },
            Scenario::Tput {
                conns: 1000,
                size: 64,
            },
            Scenario::Tput {
                conns: 100,
                size: 16384,
            },
            Scenario::LATENCY,
            Scenario::Handshake,
            Scenario::Idle { busy: false },
            Scenario::Idle { busy: true },
            Scenario::WssHandshake(KeyKind::Ecdsa),
            Scenario::WssHandshake(KeyKind::Rsa),
            Scenario::WssTput {
                conns: 100,
                size: 64,
            },
            Scenario::WssTput {
                conns: 100,
                size: 16384,
            },
            Scenario::WssIdle,
            Scenario::Paced {
                conns: 1000,
                rate: 10,
            },
            Scenario::Paced {
                conns: 9900,
                rate: 2,
            },
            Scenario::Storm,
        ]
    }

    /// Whether the proxy terminates TLS in this scenario.
    fn wss(self) -> bool {
        matches!(
            self,
            Scenario::WssTput { .. } | Scenario::WssHandshake(_) | Scenario::WssIdle
        )
    }

    /// The leaf's key kind for a wss scenario.
    fn key(self) -> Option<KeyKind> {
        match self {
            Scenario::WssHandshake(k) => Some(k),
            Scenario::WssTput { .. } | Scenario::WssIdle => Some(KeyKind::Ecdsa),
            _ => None,
        }
    }

    /// The same load over plain ws, for the wss tables' "vs ws" column.
    fn plain(self) -> Option<Scenario> {
        match self {
            Scenario::WssTput { conns, size } => Some(Scenario::Tput { conns, size }),
            Scenario::WssHandshake(_) => Some(Scenario::Handshake),
            Scenario::WssIdle => Some(Scenario::Idle { busy: false }),
            _ => None,
        }
    }

    fn parse(s: &str) -> Option<Vec<Scenario>> {
        Some(match s {
            "all" => Scenario::all(),
            "tput" => Scenario::all()[..3].to_vec(),
            "tput-100x64" => vec![Scenario::Tput {
                conns: 100,
                size: 64,
            }],
            "tput-1000x64" => vec![Scenario::Tput {
                conns: 1000,
                size: 64,
            }],
            "tput-100x16k" => vec![Scenario::Tput {
                conns: 100,
                size: 16384,
            }],
            "latency" => vec![Scenario::LATENCY],
            "latency-1000" => vec![Scenario::Paced {
                conns: 1000,
                rate: 10,
            }],
            "light" => vec![Scenario::Paced {
                conns: 9900,
                rate: 2,
            }],
            "handshake" => vec![Scenario::Handshake],
            "idle" => vec![Scenario::Idle { busy: false }],
            "idle-busy" => vec![Scenario::Idle { busy: true }],
            "wss" => Scenario::all().into_iter().filter(|s| s.wss()).collect(),
            "wss-handshake-ecdsa" => vec![Scenario::WssHandshake(KeyKind::Ecdsa)],
            "wss-handshake-rsa" => vec![Scenario::WssHandshake(KeyKind::Rsa)],
            "wss-tput-100x64" => vec![Scenario::WssTput {
                conns: 100,
                size: 64,
            }],
            "wss-tput-100x16k" => vec![Scenario::WssTput {
                conns: 100,
                size: 16384,
            }],
            "wss-idle" => vec![Scenario::WssIdle],
            "storm" => vec![Scenario::Storm],
            _ => return None,
        })
    }

    fn title(self, a: &Args) -> String {
        match self {
            Scenario::Tput { conns, size } if size >= 1024 => {
                format!("closed loop, {conns} conns x {} KiB", size / 1024)
            }
            Scenario::Tput { conns, size } => format!("closed loop, {conns} conns x {size} B"),
            Scenario::Paced { conns, rate } => {
                format!("paced, {conns} conns x {rate} msg/s x 64 B (latency in us)")
            }
            Scenario::Handshake => "handshakes, 50 concurrent connect-upgrade-close loops".into(),
            Scenario::Idle { busy: false } => format!("idle, {} connections held", a.idle_conns),
            Scenario::Idle { busy: true } => format!(
                "idle after busy, {} connections held, each first echoed {} KiB",
                a.idle_conns,
                IDLE_BUSY_BYTES / 1024
            ),
            Scenario::WssTput { conns, size } if size >= 1024 => {
                format!(
                    "wss closed loop (ECDSA), {conns} conns x {} KiB",
                    size / 1024
                )
            }
            Scenario::WssTput { conns, size } => {
                format!("wss closed loop (ECDSA), {conns} conns x {size} B")
            }
            Scenario::WssHandshake(k) => format!(
                "wss handshakes ({}), 50 concurrent connect-TLS-upgrade-close loops, no resumption",
                match k {
                    KeyKind::Ecdsa => "ECDSA P-256",
                    KeyKind::Rsa => "RSA 2048",
                }
            ),
            Scenario::WssIdle => {
                format!("wss idle (ECDSA), {} connections held", a.idle_conns)
            }
            Scenario::Storm => format!(
                "reconnect storm, {} connections dropped at once, all reconnecting concurrently",
                a.idle_conns
            ),
        }
    }
}

fn args() -> Args {
    let mut a = Args {
        scenarios: Scenario::all(),
        targets: vec![Kind::Direct, Kind::Wslb, Kind::Haproxy, Kind::Nginx],
        rounds: 3,
        secs: 5.0,
        idle_conns: 9900,
        io: "auto".into(),
        install_peers: false,
        ab_env: Vec::new(),
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    let usage = |msg: String| -> ! {
        eprintln!("load bench: {msg}\n(see benches/load/main.rs for the flags)");
        std::process::exit(2)
    };
    while i < v.len() {
        let val = |i: usize| {
            v.get(i + 1)
                .cloned()
                .unwrap_or_else(|| usage(format!("{} needs a value", v[i])))
        };
        let num = |i: usize| {
            val(i)
                .parse::<f64>()
                .unwrap_or_else(|_| usage(format!("{} needs a number", v[i])))
        };
        match v[i].as_str() {
            "--scenarios" => {
                let mut s = Vec::new();
                for name in val(i).split(',') {
                    s.extend(
                        Scenario::parse(name)
                            .unwrap_or_else(|| usage(format!("unknown scenario {name}"))),
                    );
                }
                s.dedup();
                a.scenarios = s;
            }
            "--targets" => {
                a.targets = val(i)
                    .split(',')
                    .map(|t| match t {
                        "direct" => Kind::Direct,
                        "wslb" => Kind::Wslb,
                        "haproxy" => Kind::Haproxy,
                        "nginx" => Kind::Nginx,
                        "pollio" => Kind::PollIo,
                        "wslb-ab" => Kind::WslbAb,
                        other => usage(format!("unknown target {other}")),
                    })
                    .collect();
            }
            "--ab-config" => targets::add_ab_config(&val(i)),
            "--rounds" => a.rounds = num(i).max(1.0) as usize,
            "--secs" => a.secs = num(i),
            "--idle-conns" => a.idle_conns = num(i) as usize,
            "--io-driver" => a.io = val(i),
            "--ab-env" => {
                let kv = val(i);
                let (k, v) = kv
                    .split_once('=')
                    .unwrap_or_else(|| usage(format!("--ab-env wants K=V, not {kv}")));
                a.ab_env.push((k.into(), v.into()));
                if !a.targets.contains(&Kind::WslbAb) {
                    a.targets.push(Kind::WslbAb);
                }
            }
            "--install-peers" => {
                a.install_peers = true;
                i += 1;
                continue;
            }
            "--bench" => {
                i += 1;
                continue;
            }
            other => usage(format!("unknown argument {other}")),
        }
        i += 2;
    }
    if !a.targets.contains(&Kind::Direct) {
        a.targets.insert(0, Kind::Direct);
    }
    a
}

/// One target's result in one round of one scenario: named values.
type Sample = BTreeMap<&'static str, f64>;

fn main() {
    // The soak's echo backends are this binary started again.
    soak::echo::serve_if_asked();
    if let Some(code) = soak::run_if_asked() {
        std::process::exit(code);
    }
    let mut a = args();
    if a.install_peers {
        let ok = std::process::Command::new("apt-get")
            .args(["install", "-y", "-q", "haproxy", "nginx"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "apt-get install haproxy nginx failed");
    }
    a.targets.retain(|k| {
        let ok = k.installed();
        if !ok {
            eprintln!(
                "load bench: {} is not installed; skipping it (--install-peers)",
                k.name()
            );
        }
        ok
    });
    let (backends, _backend_procs) = targets::echo_backends();
    println!(
        "load bench: {} rounds x {} s; targets {}; backends: 2 x `wslb echo` (1 worker each); \
         proxies: 2 threads/workers; client: 1 thread; {} cores",
        a.rounds,
        a.secs,
        a.targets
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(", "),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let certs = a
        .scenarios
        .iter()
        .any(|s| s.wss())
        .then(tls::Certs::generate);
    if certs.is_some() {
        println!("wss: client {}", tls::CLIENT_SUMMARY);
    }
    let connector = certs.as_ref().map(tls::Certs::connector);
    // Long-running targets for the load scenarios; the idle ones start a fresh process each
    // time.
    let running: Vec<Target> = a
        .targets
        .iter()
        .map(|&k| targets::start(k, &backends, &a.io, &a.ab_env, None))
        .collect();
    // And one more of each kind that can, terminating TLS, per leaf key kind the wss load
    // scenarios use: `running_tls[key][i]` stands beside `running[i]`.
    let keys: BTreeSet<KeyKind> = a
        .scenarios
        .iter()
        .filter(|s| **s != Scenario::WssIdle)
        .filter_map(|s| s.key())
        .collect();
    let running_tls: BTreeMap<KeyKind, Vec<Option<Target>>> = keys
        .into_iter()
        .map(|key| {
            let files = certs.as_ref().unwrap().files(key);
            let started = a
                .targets
                .iter()
                .map(|&k| {
                    k.tls()
                        .then(|| targets::start(k, &backends, &a.io, &a.ab_env, Some(files)))
                })
                .collect();
            (key, started)
        })
        .collect();
    let mut results: BTreeMap<(Scenario, usize), Vec<Sample>> = BTreeMap::new();
    for round in 0..a.rounds {
        for &sc in &a.scenarios {
            // The order rotates each round: on this shared machine where a target runs in
            // the round matters (measured: two builds differed by 0.85x at 100 x 16 KiB
            // with one of them always first, and by 1.16x with the other first).
            let n = running.len();
            for ti in (0..n).map(|j| (j + round) % n) {
                let t = &running[ti];
                if sc.wss() && !t.kind.tls() {
                    continue;
                }
                let s = match sc {
                    Scenario::Idle { busy } => {
                        let fresh = targets::start(t.kind, &backends, &a.io, &a.ab_env, None);
                        let size = if busy { IDLE_BUSY_BYTES } else { 32 };
                        idle(&fresh, &a, size, client::Plain, false)
                    }
                    Scenario::WssIdle => {
                        let files = certs.as_ref().unwrap().files(KeyKind::Ecdsa);
                        let fresh =
                            targets::start(t.kind, &backends, &a.io, &a.ab_env, Some(files));
                        idle(&fresh, &a, 32, connector.clone().unwrap(), true)
                    }
                    _ if sc.wss() => {
                        let t = running_tls[&sc.key().unwrap()][ti].as_ref().unwrap();
                        measure(sc, t, &a, connector.as_ref())
                    }
                    _ => measure(sc, t, &a, None),
                };
                println!(
                    "  round {round} {:<24} {:<8} {}",
                    short(sc),
                    t.kind.name(),
                    fmt_sample(&s)
                );
                results.entry((sc, ti)).or_default().push(s);
            }
        }
    }
    println!();
    for &sc in &a.scenarios {
        table(sc, &a, &running, &results);
    }
    drop(running_tls);
    drop(running);
}

fn short(sc: Scenario) -> String {
    match sc {
        Scenario::Tput { conns, size } => format!("tput-{conns}x{size}"),
        Scenario::Idle { busy: false } => "idle".into(),
        Scenario::Idle { busy: true } => "idle-busy".into(),
        Scenario::WssTput { conns, size } => format!("wss-tput-{conns}x{size}"),
        Scenario::WssHandshake(k) => format!("wss-handshake-{}", k.name()),
        Scenario::WssIdle => "wss-idle".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

fn fmt_sample(s: &Sample) -> String {
    s.iter()
        .map(|(k, v)| format!("{k}={v:.1}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One load scenario against one target; `wss`: the client's TLS connector, for the wss
/// scenarios.
fn measure(sc: Scenario, t: &Target, a: &Args, wss: Option<&tls::Tls>) -> Sample {
    let addrs: Vec<SocketAddr> = t.addrs.clone();
    let mut s = Sample::new();
    match sc {
        Scenario::Tput { conns, size } => {
            let w = client::closed_loop(client::Plain, addrs, conns, size, a.secs, t.cpu_reader());
            let rate = w.count as f64 / w.elapsed.as_secs_f64();
            s.insert("msg/s", rate);
            cpu_figures(&mut s, t, w.count, w.cpu);
        }
        Scenario::WssTput { conns, size } => {
            let c = wss.unwrap().clone();
            let w = client::closed_loop(c, addrs, conns, size, a.secs, t.cpu_reader());
            s.insert("msg/s", w.count as f64 / w.elapsed.as_secs_f64());
            cpu_figures(&mut s, t, w.count, w.cpu);
            s.insert("client_cpu", w.client_cpu / w.elapsed.as_secs_f64());
        }
        Scenario::WssHandshake(_) => {
            let c = wss.unwrap().clone();
            let (w, failed, e) = client::handshakes(c, addrs, 50, a.secs, t.cpu_reader());
            assert!(
                failed == 0,
                "{}: {failed} wss handshakes failed, the first with: {}",
                t.kind.name(),
                e.unwrap_or_default()
            );
            s.insert("hs/s", w.count as f64 / w.elapsed.as_secs_f64());
            cpu_figures(&mut s, t, w.count, w.cpu);
            s.insert("client_cpu", w.client_cpu / w.elapsed.as_secs_f64());
        }
        Scenario::Paced { conns, rate } => {
            let cpu = t.cpu_reader();
            let (h, window) = client::paced(addrs, conns, f64::from(rate), 64, a.secs, cpu);
            cpu_figures(&mut s, t, h.len(), window);
            s.insert("p50", h.value_at_quantile(0.50) as f64);
            s.insert("p99", h.value_at_quantile(0.99) as f64);
            s.insert("p999", h.value_at_quantile(0.999) as f64);
            s.insert("msgs", h.len() as f64);
        }
        Scenario::Handshake => {
            let (w, failed, _) =
                client::handshakes(client::Plain, addrs, 50, a.secs, t.cpu_reader());
            assert!(failed == 0, "{}: {failed} handshakes failed", t.kind.name());
            s.insert("hs/s", w.count as f64 / w.elapsed.as_secs_f64());
            cpu_figures(&mut s, t, w.count, w.cpu);
        }
        Scenario::Storm => {
            // The long-running target, as for the handshake scenario: the storm measures
            // handshakes and CPU, not memory, so it needs no fresh process.
            let names = ["ListenOverflows", "SyncookiesSent"];
            let k0 = targets::tcp_ext(&names);
            let st = client::storm(addrs, a.idle_conns, t.cpu_reader());
            let k1 = targets::tcp_ext(&names);
            if let Some(e) = &st.first_error {
                println!(
                    "    {}: {} of {} never came back; the first one's last error: {e}",
                    t.kind.name(),
                    st.failed,
                    a.idle_conns
                );
            }
            let secs = st.elapsed.as_secs_f64();
            s.insert("back_ms", secs * 1e3);
            if st.back > 0 {
                s.insert("p50_ms", st.times.value_at_quantile(0.50) as f64 / 1e3);
                s.insert("p99_ms", st.times.value_at_quantile(0.99) as f64 / 1e3);
            }
            s.insert("failed", st.failed as f64);
            s.insert("retries", st.retries as f64);
            // Machine-wide: the proxy's listener, the backends' (which the proxy's own
            // connects to them hit), and anything else running.
            s.insert("overflows", (k1[0] - k0[0]) as f64);
            s.insert("cookies", (k1[1] - k0[1]) as f64);
            s.insert("drop_ms", st.drop_time.as_secs_f64() * 1e3);
            cpu_figures(&mut s, t, st.back as u64, st.cpu);
            if t.kind != Kind::Direct {
                s.insert("cpu_s", st.cpu.0 + st.cpu.1);
            }
            if secs > 0.0 {
                s.insert("client_cpu", st.client_cpu / secs);
            }
        }
        Scenario::Idle { .. } | Scenario::WssIdle => {
            unreachable!("idle runs on a fresh process")
        }
    }
    s
}

/// Proxy CPU seconds per million operations, and operations per proxy CPU-second.
fn cpu_figures(s: &mut Sample, t: &Target, count: u64, cpu: (f64, f64)) {
    if t.kind != Kind::Direct && count > 0 {
        let total = cpu.0 + cpu.1;
        s.insert("cpu_s/1M", total / count as f64 * 1e6);
        s.insert("user_share", if total > 0.0 { cpu.0 / total } else { 0.0 });
        if total > 0.0 {
            s.insert("per_cpu_s", count as f64 / total);
        }
    }
}

/// Holds `a.idle_conns` connections, each used once with a `size`-byte echo; `wss` adds the
/// client's own memory per connection.
fn idle<C: Connect>(t: &Target, a: &Args, size: usize, connector: C, wss: bool) -> Sample {
    let rss0 = t.rss_bytes();
    let (slab0, sockmem0) = targets::kernel_memory();
    let own0 = rss_of(std::process::id());
    let pids = t.pids();
    let log = t.log_path();
    let (tx, rx) = std::sync::mpsc::channel();
    let n = client::idle(connector, t.addrs.clone(), a.idle_conns, size, move || {
        let rss: u64 = pids.iter().map(|&p| rss_of(p)).sum();
        let stats = log.as_deref().and_then(targets::last_stats);
        let own = rss_of(std::process::id());
        let _ = tx.send((rss, targets::kernel_memory(), stats, own));
    });
    let (rss1, (slab1, sockmem1), stats_line, own1) = rx.recv().unwrap();
    if let Some(line) = stats_line {
        println!("    {} workers while holding: {line}", t.kind.name());
    }
    let mut s = Sample::new();
    let per = |a: u64, b: u64| (b as f64 - a as f64) / n as f64;
    if t.kind != Kind::Direct {
        s.insert("rss_B/conn", per(rss0, rss1));
        s.insert("rss_MiB", rss1 as f64 / 1048576.0);
    }
    s.insert("slab_B/conn", per(slab0, slab1));
    s.insert("tcpmem_B/conn", per(sockmem0, sockmem1));
    s.insert("conns", n as f64);
    if wss {
        // The bench process's own growth: the client's TLS states, to show it stays lean.
        s.insert("client_B/conn", per(own0, own1));
    }
    s
}

fn rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// The median of one value over the rounds.
fn med(
    results: &BTreeMap<(Scenario, usize), Vec<Sample>>,
    sc: Scenario,
    ti: usize,
    key: &str,
) -> Option<f64> {
    let v: Vec<f64> = results
        .get(&(sc, ti))?
        .iter()
        .filter_map(|s| s.get(key).copied())
        .collect();
    (!v.is_empty()).then(|| median(v))
}

fn table(
    sc: Scenario,
    a: &Args,
    running: &[Target],
    results: &BTreeMap<(Scenario, usize), Vec<Sample>>,
) {
    println!("### {} (medians of {} rounds)\n", sc.title(a), a.rounds);
    let peers: Vec<usize> = running
        .iter()
        .enumerate()
        .filter(|(_, t)| matches!(t.kind, Kind::Haproxy | Kind::Nginx))
        .map(|(i, _)| i)
        .collect();
    let best_peer = |key: &str, higher_better: bool| -> Option<f64> {
        let v = peers.iter().filter_map(|&i| med(results, sc, i, key));
        if higher_better {
            v.reduce(f64::max)
        } else {
            v.reduce(f64::min)
        }
    };
    let direct = 0; // Direct is always the first target.
    let f = |x: Option<f64>, prec: usize| x.map_or("-".to_string(), |v| format!("{v:.prec$}"));
    let ratio = |x: Option<f64>, y: Option<f64>| match (x, y) {
        (Some(x), Some(y)) if y != 0.0 => format!("{:.2}x", x / y),
        _ => "-".into(),
    };
    let pct = |x: Option<f64>| x.map_or("-".into(), |u| format!("{:.0}%", u * 100.0));
    // wss tables: a target that cannot terminate TLS gets a row saying so.
    let na = |t: &Target, cols: usize| {
        let ok = !sc.wss() || t.kind.tls();
        if !ok {
            println!("| {} |{}", t.kind.name(), " n/a |".repeat(cols));
        }
        !ok
    };
    match sc {
        Scenario::Tput { .. } | Scenario::Handshake => {
            let key = if sc == Scenario::Handshake {
                "hs/s"
            } else {
                "msg/s"
            };
            println!(
                "| target | {key} | vs direct | vs best peer | proxy CPU-s / 1M | per proxy CPU-s | vs best peer | user CPU share |"
            );
            println!("|---|---|---|---|---|---|---|---|");
            let (bp, bpc) = (best_peer(key, true), best_peer("per_cpu_s", true));
            for (ti, t) in running.iter().enumerate() {
                let (r, c) = (med(results, sc, ti, key), med(results, sc, ti, "per_cpu_s"));
                println!(
                    "| {} | {} | {} | {} | {} | {} | {} | {} |",
                    t.kind.name(),
                    f(r, 0),
                    ratio(r, med(results, sc, direct, key)),
                    ratio(r, bp),
                    f(med(results, sc, ti, "cpu_s/1M"), 2),
                    f(c, 0),
                    ratio(c, bpc),
                    pct(med(results, sc, ti, "user_share")),
                );
            }
        }
        Scenario::WssTput { .. } | Scenario::WssHandshake(_) => {
            // "vs ws": the same target's plain-ws figure for the same load, when this run
            // measured it too. "client CPU": the load client's one thread, busy share of the
            // window; near 100% the client, not the proxy, set the rate.
            let key = if matches!(sc, Scenario::WssHandshake(_)) {
                "hs/s"
            } else {
                "msg/s"
            };
            println!(
                "| target | {key} | vs ws | vs best peer | proxy CPU-s / 1M | per proxy CPU-s | vs best peer | per CPU-s vs ws | user CPU share | client CPU |"
            );
            println!("|---|---|---|---|---|---|---|---|---|---|");
            let (bp, bpc) = (best_peer(key, true), best_peer("per_cpu_s", true));
            let ws = |ti: usize, k: &str| med(results, sc.plain()?, ti, k);
            for (ti, t) in running.iter().enumerate() {
                if na(t, 9) {
                    continue;
                }
                let (r, c) = (med(results, sc, ti, key), med(results, sc, ti, "per_cpu_s"));
                println!(
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    t.kind.name(),
                    f(r, 0),
                    ratio(r, ws(ti, key)),
                    ratio(r, bp),
                    f(med(results, sc, ti, "cpu_s/1M"), 2),
                    f(c, 0),
                    ratio(c, bpc),
                    ratio(c, ws(ti, "per_cpu_s")),
                    pct(med(results, sc, ti, "user_share")),
                    pct(med(results, sc, ti, "client_cpu")),
                );
            }
        }
        Scenario::Paced { .. } => {
            println!(
                "| target | p50 | p99 | p999 | added p50 | added p99 | added p50 vs best peer | proxy CPU-s / 1M | per proxy CPU-s | vs best peer |"
            );
            println!("|---|---|---|---|---|---|---|---|---|---|");
            let bpc = peers
                .iter()
                .filter_map(|&i| med(results, sc, i, "per_cpu_s"))
                .reduce(f64::max);
            let d50 = med(results, sc, direct, "p50");
            let d99 = med(results, sc, direct, "p99");
            let added = |ti: usize, k: &str, d: Option<f64>| Some(med(results, sc, ti, k)? - d?);
            let best_added50 = peers
                .iter()
                .filter_map(|&i| added(i, "p50", d50))
                .reduce(f64::min);
            for (ti, t) in running.iter().enumerate() {
                println!(
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    t.kind.name(),
                    f(med(results, sc, ti, "p50"), 0),
                    f(med(results, sc, ti, "p99"), 0),
                    f(med(results, sc, ti, "p999"), 0),
                    f(added(ti, "p50", d50), 0),
                    f(added(ti, "p99", d99), 0),
                    ratio(added(ti, "p50", d50), best_added50),
                    f(med(results, sc, ti, "cpu_s/1M"), 2),
                    f(med(results, sc, ti, "per_cpu_s"), 0),
                    ratio(med(results, sc, ti, "per_cpu_s"), bpc),
                );
            }
        }
        Scenario::Idle { .. } => {
            println!(
                "| target | user-space RSS / conn | RSS at hold | kernel slab / conn | TCP buffers / conn |"
            );
            println!("|---|---|---|---|---|");
            for (ti, t) in running.iter().enumerate() {
                let kib = |k: &str| {
                    med(results, sc, ti, k).map_or("-".into(), |v| format!("{:.2} KiB", v / 1024.0))
                };
                println!(
                    "| {} | {} | {} | {} | {} |",
                    t.kind.name(),
                    kib("rss_B/conn"),
                    f(med(results, sc, ti, "rss_MiB"), 1) + " MiB",
                    kib("slab_B/conn"),
                    kib("tcpmem_B/conn"),
                );
            }
        }
        Scenario::WssIdle => {
            // Kernel figures are machine-wide, so they include the client's sockets, as in
            // the plain idle table; "client / conn" is the bench process's own growth.
            println!(
                "| target | user-space RSS / conn | vs ws | vs best peer | RSS at hold | kernel slab / conn | TCP buffers / conn | client RSS / conn |"
            );
            println!("|---|---|---|---|---|---|---|---|");
            let bp = best_peer("rss_B/conn", false);
            for (ti, t) in running.iter().enumerate() {
                if na(t, 7) {
                    continue;
                }
                let kib = |k: &str| {
                    med(results, sc, ti, k).map_or("-".into(), |v| format!("{:.2} KiB", v / 1024.0))
                };
                let r = med(results, sc, ti, "rss_B/conn");
                let ws = sc.plain().and_then(|p| med(results, p, ti, "rss_B/conn"));
                println!(
                    "| {} | {} | {} | {} | {} | {} | {} | {} |",
                    t.kind.name(),
                    kib("rss_B/conn"),
                    ratio(r, ws),
                    ratio(r, bp),
                    f(med(results, sc, ti, "rss_MiB"), 1) + " MiB",
                    kib("slab_B/conn"),
                    kib("tcpmem_B/conn"),
                    kib("client_B/conn"),
                );
            }
        }
        Scenario::Storm => {
            // "all back": from the first close until the last connection echoed (or gave
            // up, if any failed), the N closes included (drop_ms in the round lines).
            // "p50/p99": per connection, from its own close to its echo.
            // "retries": attempts after a failed one. "listen overflows": the kernel's
            // count of SYNs and handshake ACKs dropped at a full accept queue,
            // machine-wide (the proxy's listener and the backends', which the proxy's own
            // connects hit); a dropped SYN costs its connection a 1 s SYN retransmit.
            // "SYN cookies": sent when a SYN queue was full. The listen backlogs (as
            // `ss -ltn` shows them; the kernel caps each at net.core.somaxconn, 4096
            // here): wslb 4096 on each of its two SO_REUSEPORT sockets (its `backlog`
            // setting, default 4096; one per worker), the echo backends 4096 (one socket
            // each), HAProxy 4096 (no `backlog` on its bind), NGINX 511 (its Linux default;
            // no `backlog=` on its listen). Not changed here: each is that proxy's
            // out-of-the-box behaviour, which is what a storm meets. "per proxy CPU-s":
            // connections back per proxy CPU-second over the storm, tearing down the
            // dropped ones included. "client CPU": the load client's one thread, busy
            // share of the storm; near 100% the client set the pace.
            println!(
                "| target | all back | vs best peer | reconnect p50 | p99 | failed | retries | listen overflows | SYN cookies | proxy CPU-s | per proxy CPU-s | vs best peer | client CPU |"
            );
            println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
            let (bp, bpc) = (best_peer("back_ms", false), best_peer("per_cpu_s", true));
            for (ti, t) in running.iter().enumerate() {
                let ms = |k: &str, prec: usize| f(med(results, sc, ti, k), prec) + " ms";
                let (r, c) = (
                    med(results, sc, ti, "back_ms"),
                    med(results, sc, ti, "per_cpu_s"),
                );
                println!(
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    t.kind.name(),
                    ms("back_ms", 0),
                    ratio(r, bp),
                    ms("p50_ms", 1),
                    ms("p99_ms", 1),
                    f(med(results, sc, ti, "failed"), 0),
                    f(med(results, sc, ti, "retries"), 0),
                    f(med(results, sc, ti, "overflows"), 0),
                    f(med(results, sc, ti, "cookies"), 0),
                    f(med(results, sc, ti, "cpu_s"), 2),
                    f(c, 0),
                    ratio(c, bpc),
                    pct(med(results, sc, ti, "client_cpu")),
                );
            }
        }
    }
    println!();
}
