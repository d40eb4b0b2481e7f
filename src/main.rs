//! Command line: `wslb run | echo | demo | check`.
#![deny(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use wslb::EchoServer;
use wslb::config::{Config, ConfigError, IoDriver, Source, count};
use wslb::supervise::{Outcome, Supervisor};

/// mimalloc: per-thread heaps suit thread-per-core workers (no cross-thread frees on the
/// hot path) and it returns freed pages to the OS, which matters with many idle connections.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "wslb",
    version,
    about = "WebSocket load balancer: thread per core, io_uring, zero-copy frame relay"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the load balancer. Flags override the config file.
    Run {
        #[command(flatten)]
        source: Source,
        /// Binary upgrade: take over the listening sockets of the wslb running with the
        /// same `upgrade_socket`, which then drains and exits. Runs one worker per socket
        /// taken over.
        #[arg(long)]
        takeover: bool,
    },
    /// Run a WebSocket echo backend.
    Echo {
        /// Address to listen on, e.g. 127.0.0.1:9001.
        #[arg(long, value_name = "ADDR")]
        listen: SocketAddr,
        /// Worker threads (default: all available cores).
        #[arg(long, value_name = "N")]
        workers: Option<usize>,
    },
    /// Two echo backends on loopback behind the balancer (on 127.0.0.1:8080, the admin
    /// server on 127.0.0.1:9091, unless --listen and --admin say otherwise).
    Demo {
        /// Address the balancer listens on, e.g. 127.0.0.1:8081.
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// Admin HTTP server address (metrics, health, status page); "" turns it off.
        #[arg(long, value_name = "ADDR")]
        admin: Option<String>,
    },
    /// Validate a config file: exit 0, or print every problem and exit 1.
    Check {
        /// TOML config file to check (see wslb.example.toml).
        #[arg(value_name = "FILE", required_unless_present = "config")]
        file: Option<PathBuf>,
        /// The same, as a flag (as `wslb run` takes it).
        #[arg(short = 'c', long, value_name = "FILE", conflicts_with = "file")]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    disable_transparent_huge_pages();
    shorten_allocator_purge_delay();
    raise_nofile_limit();
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WSLB_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr);
    // WSLB_LOG_FORMAT=json: one JSON object per log line, for log shippers.
    if std::env::var_os("WSLB_LOG_FORMAT").is_some_and(|f| f == "json") {
        logs.json().init();
    } else {
        logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("wslb: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Transparent huge pages off for this process, before the workers allocate.
///
/// mimalloc maps its arenas aligned to 2 MiB; where THP is `always` (the kernel default on
/// many distributions) every arena page a worker touches is backed by a 2 MiB huge page,
/// so memory that holds a few live objects per connection stays resident in 2 MiB units.
/// Measured with 9,000 idle proxied connections: 3.96 KiB of RSS per connection with THP,
/// 2.28 KiB without (README, "Memory per connection"). The connection path gains nothing
/// from huge pages: its working set is small and TLB misses are not what costs here.
/// This is what `MIMALLOC_ALLOW_THP=0` does, made the default; `WSLB_ALLOW_THP=1` keeps
/// THP on.
fn disable_transparent_huge_pages() {
    if std::env::var_os("WSLB_ALLOW_THP").is_some_and(|v| v == "1") {
        return;
    }
    let _ = nix::sys::prctl::set_thp_disable(true);
}

/// mimalloc returns freed pages to the OS 10 ms after they are freed instead of 1 s.
///
/// The pages a burst frees (relay buffers grown to 64 KiB for 200 connections at once) are
/// purged only on a later allocator call after the delay; with 1 s most were still resident
/// when the burst ended and the worker went quiet, and the idle trim's `mi_collect` did not
/// hand them all back (`worker::trim_when_idle`). Measured against the build without it in
/// the same 4-round run (load bench, `benches/results/2026-11-28-purge-delay-knob-ab.txt`):
/// 9,900 connections idle after each echoed 64 KiB hold 1.86 KiB of RSS each instead of
/// 2.32, fresh ones 1.76 instead of 1.78; msg/s 1.10x, 0.83x and 1.06x in the three
/// closed loops, with the per-round winner changing in each (another run with the delay
/// set from the environment gave 0.88x, 1.00x, 1.02x): within this machine's noise. A
/// delay of 0 (purge on every free) cost up to 14% of msg/s. `MIMALLOC_PURGE_DELAY` in the
/// environment still decides, if set.
#[allow(unsafe_code)]
fn shorten_allocator_purge_delay() {
    // mimalloc 3.x's `mi_option_purge_delay` (its position in `mi_option_e`, which
    // `libmimalloc-sys` does not export).
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: both calls take and return plain integers. `mi_option_set` is a plain
    // (non-atomic) store into mimalloc's option table, so it must not race a reader: this
    // runs first in `main`, before any other thread exists (keep it there). The version
    // check keeps the option index to the mimalloc major version it was read from.
    unsafe {
        if (30000..40000).contains(&libmimalloc_sys::mi_version()) {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 10);
        }
    }
}

/// Soft RLIMIT_NOFILE up to the hard limit, as HAProxy does: each proxied connection holds
/// two descriptors, and the default connection limit (`limits.max_connections = 0`) is
/// derived from what is then allowed.
fn raise_nofile_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { source, takeover } => {
            let settings = source.load()?;
            let supervisor = Supervisor::new();
            let _signals = supervisor.catch_signals()?;
            let lb = supervisor.start(settings, takeover)?;
            if supervisor.run(&lb, &source) == Outcome::Interrupted {
                std::process::exit(1);
            }
        }
        Command::Echo { listen, workers } => {
            let n = workers
                .filter(|&w| w > 0)
                .unwrap_or_else(wslb::config::available_cores);
            EchoServer::start(listen, n, IoDriver::Auto)
                .context("starting the echo backend")?
                .wait();
        }
        Command::Demo { listen, admin } => demo(listen, admin)?,
        Command::Check { file, config } => {
            let path = file.or(config).expect("clap requires one");
            return Ok(check(&path));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn check(config: &std::path::Path) -> ExitCode {
    let loaded = Config::read(config)
        .and_then(|parsed| {
            // Read before validation takes it: an invalid config's certificates are
            // checked too, so that their problems are in the same list.
            let tls = parsed.config.as_ref().map(|c| c.tls.clone());
            parsed.validate().map_err(|e| match (e, tls) {
                (ConfigError::Invalid(mut p), Some(t)) if t.enabled() => {
                    p.extend(wslb::tls::ServerTls::load(&t).err().unwrap_or_default());
                    ConfigError::Invalid(p)
                }
                (e, _) => e,
            })
        })
        .and_then(|s| wslb::tls::load(&s).map(|tls| (s, tls)));
    match loaded {
        Ok((s, tls)) => {
            let backends: usize = s.routes.iter().map(|r| r.backends.len()).sum();
            println!(
                "{}: ok (listen {}, {}, {}, {}{}{})",
                config.display(),
                s.listen,
                count(s.routes.len(), "route"),
                count(backends, "backend"),
                count(s.workers, "worker"),
                match &tls.server {
                    Some(t) => format!(", TLS with {}", count(t.certificates.len(), "certificate")),
                    None => String::new(),
                },
                if s.rebalance.is_some() {
                    ", rebalancing"
                } else {
                    ""
                }
            );
            for r in &s.routes {
                let host = r.host.as_config();
                println!(
                    "  route {:?}: host {}, path_prefix {}, {}, {}{}{}",
                    r.name,
                    if host.is_empty() { "any" } else { &host },
                    r.path_prefix,
                    count(r.backends.len(), "backend"),
                    r.balancing.algorithm.name(),
                    if r.balancing.sticky.is_some() {
                        ", sticky cookie"
                    } else {
                        ""
                    },
                    if r.health.is_some() {
                        ", health checks"
                    } else {
                        ""
                    },
                );
            }
            for w in tls
                .server
                .iter()
                .flat_map(|t| &t.warnings)
                .chain(&s.warnings)
            {
                eprintln!("  warning: {w}");
            }
            ExitCode::SUCCESS
        }
        Err(ConfigError::Invalid(problems)) => {
            eprintln!("{}: {}", config.display(), count(problems.len(), "problem"));
            for p in problems {
                eprintln!("  {p}");
            }
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Two echo backends behind the balancer; Ctrl-C drains it like `wslb run`.
fn demo(listen: Option<String>, admin: Option<String>) -> anyhow::Result<()> {
    let any: SocketAddr = "127.0.0.1:0".parse()?;
    let a = EchoServer::start(any, 1, IoDriver::Auto)?;
    let b = EchoServer::start(any, 1, IoDriver::Auto)?;
    let mut config = Config {
        backends: vec![
            a.local_addr.to_string().into(),
            b.local_addr.to_string().into(),
        ],
        ..Config::default()
    };
    if let Some(l) = listen {
        config.listen = l;
    }
    if let Some(a) = admin {
        config.admin.listen = a;
    }
    let supervisor = Supervisor::new();
    let _signals = supervisor.catch_signals()?;
    let lb = supervisor
        .start(config.validate()?, false)
        .with_context(|| {
            let admin = match config.admin.listen.as_str() {
                "" => "no admin server".to_string(),
                a => format!("its admin server on {a}"),
            };
            format!(
                "starting the demo on {} with {admin} (--listen and --admin move them; \
                 --admin \"\" turns the admin server off)",
                config.listen
            )
        })?;
    println!(
        "\nwslb demo: balancer on ws://{} -> echo backends {} and {}\n\
         Try it (each new connection goes to the next backend):\n  \
         python3 -m pip install websockets && python3 -m websockets ws://{}/\n\
         {}Ctrl-C stops the demo.",
        lb.local_addr,
        a.local_addr,
        b.local_addr,
        lb.local_addr,
        lb.admin_addr.map_or(String::new(), |a| format!(
            "Status page and metrics: http://{a}/ and http://{a}/metrics\n"
        )),
    );
    if supervisor.run(&lb, &Source::default()) == Outcome::Interrupted {
        std::process::exit(1);
    }
    Ok(())
}
