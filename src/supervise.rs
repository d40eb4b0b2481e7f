//! `wslb run`'s supervision of one [`Instance`]: start it (or take over an old process's
//! listening sockets), offer them on the upgrade socket, reload on SIGHUP, drain on
//! SIGTERM/SIGINT or after a handover, exit at once on a second signal, and log the stats
//! line.
//!
//! Everything arrives as an [`Event`] on one channel (signals from a signal thread, the
//! handover from the upgrade socket's thread, the drain's end from the drain's thread), so
//! the supervisor can be driven and tested in-process.

use std::io;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Instant;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::Instance;
use crate::config::{self, Settings, Source};
use crate::drain::DrainReport;
use crate::handover::{self, HandoverError};
use crate::worker::StartError;

/// What the supervisor reacts to.
#[derive(Debug)]
pub enum Event {
    /// SIGHUP reloads; SIGTERM or SIGINT drains, and a second one exits.
    Signal(i32),
    /// A new process took over the listening sockets (binary upgrade): drain.
    HandedOver,
    /// The drain has ended.
    Drained(DrainReport),
}

/// How the supervision ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The drain ran to its end.
    Drained(DrainReport),
    /// A second SIGTERM/SIGINT during the drain: the caller should exit without waiting.
    Interrupted,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("installing signal handlers")]
    Signals(#[source] io::Error),
    #[error("--takeover needs upgrade_socket in the config (the old wslb's)")]
    NoUpgradeSocket,
    #[error(transparent)]
    Handover(#[from] HandoverError),
    #[error("{what}")]
    Start {
        what: &'static str,
        #[source]
        source: StartError,
    },
    #[error("offering the listening sockets for upgrades")]
    Offer(#[source] io::Error),
    /// A certificate the config names does not load: reported as the config's problems.
    #[error(transparent)]
    Config(crate::config::ConfigError),
}

impl RunError {
    fn start(what: &'static str) -> impl FnOnce(StartError) -> RunError {
        move |source| match source {
            StartError::Tls(e) => RunError::Config(e),
            source => RunError::Start { what, source },
        }
    }
}

/// The supervisor's event channel and loop (see the module docs).
pub struct Supervisor {
    tx: Sender<Event>,
    rx: Receiver<Event>,
}

impl Default for Supervisor {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel();
        Self { tx, rx }
    }
}

/// SIGTERM, SIGINT and SIGHUP caught and sent to a [`Supervisor`] until this is dropped.
pub struct Signals {
    handle: signal_hook::iterator::Handle,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Signals {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Supervisor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Where to send events from other threads.
    pub fn events(&self) -> Sender<Event> {
        self.tx.clone()
    }

    /// Catches SIGTERM, SIGINT and SIGHUP from now on (call it before starting the
    /// workers, so that no signal finds no handler installed).
    pub fn catch_signals(&self) -> Result<Signals, RunError> {
        let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
            .map_err(RunError::Signals)?;
        let handle = signals.handle();
        let tx = self.tx.clone();
        let thread = std::thread::Builder::new()
            .name("wslb-signals".into())
            .spawn(move || {
                for s in signals.forever() {
                    if tx.send(Event::Signal(s)).is_err() {
                        return;
                    }
                }
            })
            .map_err(RunError::Signals)?;
        Ok(Signals {
            handle,
            thread: Some(thread),
        })
    }

    /// Starts the balancer, or with `takeover` takes over the listening sockets of the
    /// wslb running with the same `upgrade_socket` (which then drains); then offers the
    /// sockets on `upgrade_socket`, if set, for the next upgrade.
    pub fn start(&self, settings: Settings, takeover: bool) -> Result<Instance, RunError> {
        let upgrade_path = settings.upgrade_socket.clone();
        let instance = if takeover {
            let path = upgrade_path.as_deref().ok_or(RunError::NoUpgradeSocket)?;
            let (listeners, handover) = handover::take_over(path)?;
            if listeners.len() != settings.workers {
                tracing::warn!(
                    "took over {}: running {}, not the {} configured \
                     (a cold restart changes the worker count)",
                    config::count(listeners.len(), "listening socket"),
                    config::count(listeners.len(), "worker"),
                    settings.workers
                );
            }
            let instance = Instance::start_on(settings, listeners).map_err(RunError::start(
                "starting the balancer on the sockets taken over",
            ))?;
            handover.ready()?;
            tracing::info!("binary upgrade: serving; the old process drains");
            instance
        } else {
            Instance::start(settings).map_err(RunError::start("starting the balancer"))?
        };
        if let Some(path) = &upgrade_path {
            let upgrade = if takeover {
                handover::rebind(path)?
            } else {
                handover::bind(path)?
            };
            let tx = self.tx.clone();
            instance
                .handle()
                .offer_handover(upgrade, move || {
                    let _ = tx.send(Event::HandedOver);
                })
                .map_err(RunError::Offer)?;
            tracing::info!(
                "binary upgrades: offering the listening sockets on {}",
                path.display()
            );
        }
        Ok(instance)
    }

    /// Runs `instance` until it has drained (or a second signal interrupts the drain),
    /// reloading from `source` on SIGHUP.
    pub fn run(self, instance: &Instance, source: &Source) -> Outcome {
        let fixed = instance.fixed();
        let (grace, close_grace) = (fixed.shutdown_grace, fixed.close_grace);
        let mut stats = fixed
            .stats_interval
            .map(|i| (i, Instant::now() + i, String::new()));
        let mut draining = None;
        loop {
            // `self` holds a sender, so the channel never disconnects.
            let event = match &mut stats {
                None => self.rx.recv().expect("the supervisor holds a sender"),
                Some((every, next, last)) => {
                    match self
                        .rx
                        .recv_timeout(next.saturating_duration_since(Instant::now()))
                    {
                        Ok(e) => e,
                        Err(RecvTimeoutError::Timeout) => {
                            // Logged only when something changed.
                            let line = crate::metrics::summary(&instance.stats);
                            if line != *last {
                                tracing::info!("stats: {line}");
                                *last = line;
                            }
                            *next += *every;
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => {
                            unreachable!("the supervisor holds a sender")
                        }
                    }
                }
            };
            match event {
                Event::Signal(SIGHUP) if draining.is_none() => reload(instance, source),
                Event::Signal(SIGHUP) => {}
                Event::Signal(_) if draining.is_some() => {
                    tracing::warn!("second signal: exiting without waiting");
                    return Outcome::Interrupted;
                }
                Event::Signal(s) => {
                    tracing::info!("signal {s}: draining (a second signal exits at once)");
                    draining = Some(self.drain(instance, false, grace, close_grace));
                }
                Event::HandedOver if draining.is_none() => {
                    draining = Some(self.drain(instance, true, grace, close_grace));
                }
                Event::HandedOver => {}
                Event::Drained(report) => {
                    if let Some(t) = draining.take() {
                        let _ = t.join();
                    }
                    tracing::info!(
                        "drained: {} open at the start, {} sent close 1001, {} left open",
                        config::count(report.open_at_start as usize, "connection"),
                        report.sent_going_away,
                        report.left_open
                    );
                    return Outcome::Drained(report);
                }
            }
        }
    }

    /// Drains on a thread of its own, so that a second signal is still heard meanwhile.
    fn drain(
        &self,
        instance: &Instance,
        handed_over: bool,
        grace: std::time::Duration,
        close_grace: std::time::Duration,
    ) -> JoinHandle<()> {
        let (handle, tx) = (instance.handle(), self.tx.clone());
        std::thread::spawn(move || {
            let report = if handed_over {
                handle.drain_after_handover(grace, close_grace)
            } else {
                handle.drain(grace, close_grace)
            };
            let _ = tx.send(Event::Drained(report));
        })
    }
}

/// SIGHUP: re-reads the config file (with the same flags over it) and applies it; an
/// invalid one changes nothing.
fn reload(instance: &Instance, source: &Source) {
    // Log rotation: the access log file is reopened on every SIGHUP, config or not.
    if let Err(e) = instance.handle().reopen_logs() {
        tracing::error!("SIGHUP: cannot reopen the access log ({e}); still writing the old file");
    }
    let tls_flags = source.overrides.tls_cert.is_some() || source.overrides.tls_key.is_some();
    match &source.path {
        Some(path) => tracing::info!("SIGHUP: reloading {}", path.display()),
        // Certificate files named by flags are read again (a renewal keeps their paths).
        None if tls_flags => tracing::info!("SIGHUP: reloading the TLS certificates"),
        None => {
            tracing::warn!("SIGHUP: wslb was started without --config; nothing to reload");
            return;
        }
    }
    // The certificates are read here, so that one that does not load fails the reload
    // like any other problem (the same lines logged, nothing applied).
    match source
        .load()
        .and_then(|new| crate::tls::load(&new).map(|tls| (new, tls)))
    {
        Ok((new, tls)) => {
            for w in tls.server.iter().flat_map(|t| &t.warnings) {
                tracing::warn!("{w}");
            }
            let applied = instance.handle().apply(&new, tls);
            // Every changed setting is in one of the two lists (`reload.rs`).
            let list = |what: &str, names: &[&str]| match names {
                [] => String::new(),
                _ => format!("; {what}: {}", names.join(", ")),
            };
            let done: Vec<&str> = applied.applied.iter().map(String::as_str).collect();
            tracing::info!(
                "reload done: {} added, {} removed{}{}",
                config::count(applied.backends.added.len(), "backend"),
                applied.backends.removed.len(),
                list("applied", &done),
                list("not applied until a restart", &applied.needs_restart)
            );
        }
        Err(e) => {
            instance.handle().reload_failed();
            for line in e.to_string().lines() {
                tracing::error!(
                    "reload rejected, still running on the old config: {}",
                    line.trim()
                );
            }
        }
    }
}
