//! Command line: `wslb run | echo | demo | check`.
#![deny(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use wslb::config::{Config, ConfigError, IoDriver};

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
        /// TOML config file (see wslb.example.toml).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Address to listen on, e.g. 0.0.0.0:8080.
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// A backend host:port; repeat for several. Replaces the config file's list.
        #[arg(long = "backend", value_name = "ADDR")]
        backends: Vec<String>,
        /// Worker threads, one per core (0 or absent: all available cores).
        #[arg(long, value_name = "N")]
        workers: Option<usize>,
        /// io driver: auto (io_uring, else epoll), io-uring, epoll.
        #[arg(long, value_name = "auto|io-uring|epoll")]
        io_driver: Option<IoDriver>,
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
    /// Two echo backends on loopback behind the balancer on 127.0.0.1:8080.
    Demo,
    /// Validate a config file: exit 0, or print every problem and exit 1.
    Check {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    disable_transparent_huge_pages();
    raise_nofile_limit();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WSLB_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
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
        Command::Run {
            config,
            listen,
            backends,
            workers,
            io_driver,
            takeover,
        } => {
            let flags = Overrides {
                listen,
                backends,
                workers,
                io_driver,
            };
            let settings = load(config.as_deref(), &flags)?;
            serve(settings, config.as_deref(), &flags, takeover)?;
        }
        Command::Echo { listen, workers } => {
            let n = workers
                .filter(|&w| w > 0)
                .unwrap_or_else(wslb::config::available_cores);
            let running =
                wslb::start_echo(listen, n, IoDriver::Auto).context("starting the echo backend")?;
            running.wait();
        }
        Command::Demo => demo()?,
        Command::Check { config } => {
            let checked = Config::from_file(&config).and_then(|c| c.validate());
            return Ok(match checked {
                Ok(s) => {
                    println!(
                        "{}: ok (listen {}, {} backends, {} workers)",
                        config.display(),
                        s.listen,
                        s.backends.len(),
                        s.workers
                    );
                    ExitCode::SUCCESS
                }
                Err(ConfigError::Invalid(problems)) => {
                    eprintln!("{}: {} problems", config.display(), problems.len());
                    for p in problems {
                        eprintln!("  {}: {}", p.field, p.message);
                    }
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What the main thread of `wslb run` waits for.
enum Event {
    Signal(i32),
    /// A new process took over the listening sockets (binary upgrade).
    HandedOver,
}

/// `wslb run`: start (or take over), then reload on SIGHUP until SIGTERM/SIGINT or a
/// handover, then drain and return.
fn serve(
    settings: wslb::config::Settings,
    config: Option<&std::path::Path>,
    flags: &Overrides,
    takeover: bool,
) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let interval = settings.stats_interval;
    let (grace, close_grace) = (settings.shutdown_grace, settings.close_grace);
    let upgrade_path = settings.upgrade_socket.clone();
    // Signal handlers before the workers start, so no signal finds none installed.
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .context("installing signal handlers")?;
    let (events, rx) = std::sync::mpsc::channel();
    let tx = events.clone();
    std::thread::spawn(move || {
        for s in signals.forever() {
            if tx.send(Event::Signal(s)).is_err() {
                return;
            }
        }
    });

    let mut running = if takeover {
        let path = upgrade_path
            .as_deref()
            .context("--takeover needs upgrade_socket in the config (the old wslb's)")?;
        let (listeners, handover) = wslb::handover::take_over(path)?;
        if listeners.len() != settings.workers {
            tracing::warn!(
                "took over {} listening sockets: running {} workers, not the {} configured \
                 (a cold restart changes the worker count)",
                listeners.len(),
                listeners.len(),
                settings.workers
            );
        }
        let running = wslb::start_balancer_on(settings, listeners)
            .context("starting the balancer on the sockets taken over")?;
        handover.ready()?;
        tracing::info!("binary upgrade: serving; the old process drains");
        running
    } else {
        wslb::start_balancer(settings).context("starting the balancer")?
    };
    if let Some(path) = &upgrade_path {
        let upgrade = if takeover {
            wslb::handover::rebind(path)?
        } else {
            wslb::handover::bind(path)?
        };
        let tx = events.clone();
        let sockets = running
            .listening_sockets()
            .context("duplicating the listening sockets for upgrades")?;
        wslb::handover::offer(upgrade, sockets, move || {
            let _ = tx.send(Event::HandedOver);
        })
        .context("starting the upgrade socket thread")?;
        tracing::info!(
            "binary upgrades: offering the listening sockets on {}",
            path.display()
        );
    }
    if let Some(i) = interval {
        wslb::metrics::log_every(running.stats.clone(), i);
    }
    let drainer = running.drainer().expect("a balancer can be drained");
    let handed_over = loop {
        match rx.recv() {
            Ok(Event::Signal(SIGHUP)) => reload(&mut running, config, flags),
            Ok(Event::Signal(s)) => {
                tracing::info!("signal {s}: draining (a second signal exits at once)");
                break false;
            }
            Ok(Event::HandedOver) => break true,
            Err(_) => break false,
        }
    };
    // A second SIGTERM/SIGINT during the drain: exit now.
    std::thread::spawn(move || {
        while let Ok(e) = rx.recv() {
            if matches!(e, Event::Signal(s) if s != SIGHUP) {
                tracing::warn!("second signal: exiting without waiting");
                std::process::exit(1);
            }
        }
    });
    let report = if handed_over {
        drainer.drain_after_handover(grace, close_grace)
    } else {
        drainer.drain(grace, close_grace)
    };
    tracing::info!(
        "drained: {} connections open at the start, {} sent close 1001, {} left open",
        report.open_at_start,
        report.sent_going_away,
        report.left_open
    );
    Ok(())
}

/// `wslb run`'s flags, applied over the config file at start and at every reload.
struct Overrides {
    listen: Option<String>,
    backends: Vec<String>,
    workers: Option<usize>,
    io_driver: Option<IoDriver>,
}

fn load(
    config: Option<&std::path::Path>,
    flags: &Overrides,
) -> Result<wslb::config::Settings, ConfigError> {
    let mut c = match config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(l) = &flags.listen {
        c.listen = l.clone();
    }
    if !flags.backends.is_empty() {
        c.backends = flags.backends.clone();
    }
    if let Some(w) = flags.workers {
        c.workers = w;
    }
    if let Some(d) = flags.io_driver {
        c.io_driver = d;
    }
    c.validate()
}

/// SIGHUP: re-reads the config file and applies it; an invalid one changes nothing.
fn reload(running: &mut wslb::Running, config: Option<&std::path::Path>, flags: &Overrides) {
    let Some(path) = config else {
        tracing::warn!("SIGHUP: wslb was started without --config; nothing to reload");
        return;
    };
    tracing::info!("SIGHUP: reloading {}", path.display());
    match load(config, flags) {
        Ok(new) => {
            if let Some(applied) = running.reload(&new) {
                tracing::info!(
                    "reload done: {} backends added, {} removed{}",
                    applied.backends.added.len(),
                    applied.backends.removed.len(),
                    if applied.needs_restart.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; not applied until a restart: {}",
                            applied.needs_restart.join(", ")
                        )
                    }
                );
            }
        }
        Err(e) => {
            for line in e.to_string().lines() {
                tracing::error!(
                    "reload rejected, still running on the old config: {}",
                    line.trim()
                );
            }
        }
    }
}

fn demo() -> anyhow::Result<()> {
    let any: SocketAddr = "127.0.0.1:0".parse()?;
    let a = wslb::start_echo(any, 1, IoDriver::Auto)?;
    let b = wslb::start_echo(any, 1, IoDriver::Auto)?;
    let config = Config {
        listen: "127.0.0.1:8080".into(),
        backends: vec![a.local_addr.to_string(), b.local_addr.to_string()],
        ..Config::default()
    };
    let lb = wslb::start_balancer(config.validate()?).context("starting the balancer")?;
    wslb::metrics::log_every(lb.stats.clone(), std::time::Duration::from_secs(10));
    println!(
        "\nwslb demo: balancer on ws://{} -> echo backends {} and {}\n\
         Try it (each new connection goes to the next backend):\n  \
         python3 -m pip install websockets && python3 -m websockets ws://{}/\n\
         Ctrl-C stops the demo.",
        lb.local_addr, a.local_addr, b.local_addr, lb.local_addr
    );
    lb.wait();
    Ok(())
}
