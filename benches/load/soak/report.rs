//! The soak's verdict: one table of checks (a markdown table, like the bench's other
//! results, and one `soak wslb key=value ...` line), sample lines for anything that went
//! wrong, and the exit code: 1 if any check failed.

use std::time::Duration;

use super::chaos::{Events, Finish};
use super::client::Tally;
use super::{Args, QUIET_EVERY, QUIET_FOR, World};

/// RSS of the last window may differ from the first by this much.
const RSS_TOLERANCE: f64 = 0.05;

struct Row {
    check: String,
    measured: String,
    expected: &'static str,
    /// None: information only.
    pass: Option<bool>,
}

fn row(
    check: impl Into<String>,
    measured: impl Into<String>,
    expected: &'static str,
    pass: Option<bool>,
) -> Row {
    Row {
        check: check.into(),
        measured: measured.into(),
        expected,
        pass,
    }
}

/// RSS over samples in `[from, to)` taken while one wslb process ran, outside the stall
/// (`skip`, seconds from time zero): the mean of all, and the mean over the quiet phases of
/// each phase's lowest sample (after the workers trimmed).
///
/// The trimmed figure is the one checked. Between trims RSS is the high-water mark of the
/// buffers in flight since the last one (mimalloc keeps freed pages until the trim), so the
/// mean of all samples moves with random bursts (a kill's reconnects, a run of 64 KiB
/// messages): 2-minute runs without any leak gave -5% and -7%. A leak stays after a trim.
fn rss_means(
    ev: &Events,
    (from, to): (Duration, Duration),
    skip: (f64, f64),
) -> (Option<f64>, Option<f64>) {
    let every = QUIET_EVERY.as_secs_f64();
    let quiet_from = (QUIET_EVERY - QUIET_FOR).as_secs_f64();
    let v: Vec<(f64, f64)> = ev
        .rss
        .iter()
        .filter(|(t, _, n)| *n == 1 && *t >= from.as_secs_f64() && *t < to.as_secs_f64())
        .filter(|(t, _, _)| *t < skip.0 || *t > skip.1)
        .map(|&(t, r, _)| (t, r as f64))
        .collect();
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let all: Vec<f64> = v.iter().map(|&(_, r)| r).collect();
    let mut lows = std::collections::BTreeMap::<u64, f64>::new();
    for &(t, r) in &v {
        if t % every >= quiet_from {
            let low = lows.entry((t / every) as u64).or_insert(f64::MAX);
            *low = low.min(r);
        }
    }
    let lows: Vec<f64> = lows.into_values().collect();
    (mean(&all), mean(&lows))
}

fn count_lines(logs: &[std::path::PathBuf], needle: &str) -> usize {
    logs.iter()
        .map(|l| std::fs::read_to_string(l).unwrap_or_default())
        .map(|s| s.lines().filter(|l| l.contains(needle)).count())
        .sum()
}

pub fn report(a: &Args, world: &World, t: &Tally, ev: &Events, end: &Finish) -> i32 {
    let mib = |b: u64| b as f64 / 1048576.0;
    let zero = |n: u64| Some(n == 0);
    let mut rows = vec![
        row(
            "messages sent",
            format!(
                "{} ({:.0}% text, {:.1} MiB)",
                t.sent,
                t.sent_text as f64 * 100.0 / t.sent.max(1) as f64,
                mib(t.sent_bytes)
            ),
            "-",
            None,
        ),
        row(
            "echoed intact and in order",
            t.ok.to_string(),
            "all but those cut by an expected close",
            Some(t.ok > 0 && t.ok + t.cut == t.sent),
        ),
        row(
            "corrupted (hash, length or opcode differ)",
            t.corrupted.to_string(),
            "0",
            zero(t.corrupted),
        ),
        row("reordered", t.reordered.to_string(), "0", zero(t.reordered)),
        row(
            "lost (never echoed, no expected close)",
            t.lost.to_string(),
            "0",
            zero(t.lost),
        ),
        row(
            "frames nobody asked for",
            t.extra.to_string(),
            "0",
            zero(t.extra),
        ),
        row(
            "not echoed: cut by an expected close",
            t.cut.to_string(),
            "-",
            None,
        ),
        row(
            "unexpected closes",
            t.unexpected_closes.to_string(),
            "0",
            zero(t.unexpected_closes),
        ),
    ];
    for (label, n) in &t.closes {
        if *label != "unexpected" {
            rows.push(row(format!("closes: {label}"), n.to_string(), "-", None));
        }
    }
    rows.push(row(
        "1012 before the drain deadline",
        t.early.to_string(),
        "0",
        zero(t.early),
    ));
    rows.push(row(
        "open 5 s after its backend's close was due",
        t.missed.to_string(),
        "0",
        zero(t.missed),
    ));
    let mut back = t.back_ms.clone();
    back.sort_unstable();
    let pct = |q: f64| {
        back.get(((back.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(0)
    };
    rows.push(row(
        "reconnected after a close not their own: p50 / p99 / max",
        format!(
            "{} ({} / {} / {} ms)",
            back.len(),
            pct(0.5),
            pct(0.99),
            back.last().copied().unwrap_or(0)
        ),
        "all, each within 30 s",
        Some(t.stuck == 0 && t.never_up == 0),
    ));
    rows.push(row(
        "slots down 30 s or more; never up",
        format!("{}; {}", t.stuck, t.never_up),
        "0; 0",
        Some(t.stuck == 0 && t.never_up == 0),
    ));
    let failures: Vec<String> = t
        .failures
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    rows.push(row(
        "failed connect attempts (retried)",
        if failures.is_empty() {
            "0".into()
        } else {
            failures.join("; ")
        },
        "-",
        None,
    ));
    rows.push(row(
        "stall client: sent while not reading for 30 s, echoed intact after",
        format!(
            "{} of {} ({:.1} MiB){}",
            t.stall_ok,
            t.stall_sent,
            mib(t.stall_bytes),
            if t.stall_interrupted {
                ", interrupted"
            } else {
                ""
            }
        ),
        "all",
        Some(
            t.stall_started
                && !t.stall_interrupted
                && t.stall_sent > 0
                && t.stall_ok == t.stall_sent,
        ),
    ));
    let plan = &world.plan;
    // The stall and the 2 s after it, while wslb still holds or flushes its backlog.
    let t0 = *world.start.get().unwrap();
    let skip = world
        .stall_span
        .lock()
        .unwrap()
        .map_or((f64::MAX, f64::MAX), |(a, b)| {
            let s = |t: std::time::Instant| t.saturating_duration_since(t0).as_secs_f64();
            (s(a), s(b) + 2.0)
        });
    let ((first, qfirst), (last, qlast)) = (
        rss_means(ev, plan.rss_first, skip),
        rss_means(ev, plan.rss_last, skip),
    );
    let rss_ok = match (qfirst, qlast) {
        (Some(f), Some(l)) => (l / f - 1.0).abs() <= RSS_TOLERANCE,
        _ => false,
    };
    let win =
        |w: (Duration, Duration)| format!("{:.0}-{:.0} s", w.0.as_secs_f64(), w.1.as_secs_f64());
    let vs = |f: Option<f64>, l: Option<f64>| match (f, l) {
        (Some(f), Some(l)) => format!(
            "{:.1} vs {:.1} MiB ({:+.1}%)",
            f / 1048576.0,
            l / 1048576.0,
            (l / f - 1.0) * 100.0
        ),
        // A 1-minute run: the stall (after the takeover) covers the last window.
        _ => "no samples in a window: too short a run (2 minutes or more)".into(),
    };
    rows.push(row(
        format!(
            "wslb RSS after the workers trimmed (quiet phases' lows), {} vs {}",
            win(plan.rss_first),
            win(plan.rss_last)
        ),
        vs(qfirst, qlast),
        "within 5%",
        Some(rss_ok),
    ));
    rows.push(row(
        "wslb RSS, mean of every second (busy included)",
        vs(first, last),
        "-",
        None,
    ));
    rows.push(row(
        "wslb descriptors: before clients vs after they left",
        format!(
            "{} vs {} ({})",
            end.baseline_fds, end.fds_end, end.fds_detail
        ),
        "back to the baseline",
        Some(end.fds_end <= end.baseline_fds),
    ));
    rows.push(row(
        "wslb running at the end; its exit after SIGTERM",
        format!(
            "{}; {}",
            if end.alive_at_end { "yes" } else { "NO" },
            end.last_exit.map_or("killed".into(), |c| c.to_string())
        ),
        "yes; 0",
        Some(end.alive_at_end && end.last_exit == Some(0)),
    ));
    let panics = count_lines(&end.logs, "panicked");
    rows.push(row(
        "panics in wslb's logs",
        panics.to_string(),
        "0",
        Some(panics == 0),
    ));
    let rejected = count_lines(&end.logs, "reload rejected");
    let done = count_lines(&end.logs, "reload done");
    rows.push(row(
        "reloads: SIGHUPs (adds, removes), done, rejected",
        format!(
            "{} ({}, {}), {done}, {rejected}",
            ev.reloads, ev.adds, ev.removes
        ),
        "every one done",
        Some(rejected == 0 && done as u64 == ev.reloads),
    ));
    rows.push(row(
        "backends killed and restarted",
        ev.kills.to_string(),
        "-",
        None,
    ));
    let exits: Vec<String> = end
        .old_exits
        .iter()
        .map(|c| c.map_or("killed".into(), |c| c.to_string()))
        .collect();
    rows.push(row(
        "takeover: new serving after, old exited after (status)",
        format!(
            "{} s, {} s ({})",
            ev.takeover_ready_s
                .map_or("-".into(), |s| format!("{s:.1}")),
            ev.takeover_old_gone_s
                .map_or("-".into(), |s| format!("{s:.1}")),
            exits.join(", ")
        ),
        "old exits 0",
        Some(!end.old_exits.is_empty() && end.old_exits.iter().all(|c| *c == Some(0))),
    ));
    let trims = count_lines(&end.logs, "idle: spare buffers freed");
    rows.push(row(
        "worker idle trims (log lines)",
        trims.to_string(),
        "> 0",
        Some(trims > 0),
    ));
    rows.push(row(
        "messages sent over 250 ms into a quiet phase (stall client aside)",
        t.quiet_sends.to_string(),
        "0",
        zero(t.quiet_sends),
    ));
    rows.push(row(
        "messages cut in two around a quiet phase (half-read in wslb while it trims)",
        t.split.to_string(),
        "> 0",
        Some(t.split > 0),
    ));
    rows.push(row("pings from wslb", t.pings.to_string(), "-", None));
    let warns = count_lines(&end.logs, " WARN ");
    let errors = count_lines(&end.logs, " ERROR ");
    rows.push(row(
        "wslb log: WARN / ERROR lines",
        format!("{warns} / {errors}"),
        "-",
        None,
    ));

    println!(
        "\n### soak: {} connections, {} min, seed {} (wslb only)\n",
        a.conns, a.minutes, a.seed
    );
    println!("| check | measured | expected | result |");
    println!("|---|---|---|---|");
    for r in &rows {
        let res = match r.pass {
            Some(true) => "ok",
            Some(false) => "**FAIL**",
            None => "",
        };
        println!("| {} | {} | {} | {res} |", r.check, r.measured, r.expected);
    }
    println!();
    println!(
        "  soak wslb sent={} ok={} corrupted={} reordered={} lost={} cut={} unexpected_closes={} \
         missed={} stuck={} stall_ok={}/{} rss_trimmed_first_MiB={:.1} rss_trimmed_last_MiB={:.1} fds={}/{} \
         panics={panics} trims={trims} kills={} reloads={}",
        t.sent,
        t.ok,
        t.corrupted,
        t.reordered,
        t.lost,
        t.cut,
        t.unexpected_closes,
        t.missed,
        t.stuck,
        t.stall_ok,
        t.stall_sent,
        qfirst.unwrap_or(0.0) / 1048576.0,
        qlast.unwrap_or(0.0) / 1048576.0,
        end.fds_end,
        end.baseline_fds,
        ev.kills,
        ev.reloads,
    );
    if !t.samples.is_empty() {
        println!("\nfirst {} of what went wrong:", t.samples.len());
        for s in &t.samples {
            println!("  {s}");
        }
    }
    if let Some(dir) = end.logs.first().and_then(|l| l.parent()) {
        let tsv: String = ev
            .rss
            .iter()
            .map(|(t, r, n)| format!("{t:.1}\t{r}\t{n}\n"))
            .collect();
        let _ = std::fs::write(
            dir.join("rss.tsv"),
            format!("secs\trss_bytes\tprocesses\n{tsv}"),
        );
        println!(
            "\nwslb logs and rss.tsv (wslb RSS each second) kept in {}",
            dir.display()
        );
    }
    let failed = rows.iter().filter(|r| r.pass == Some(false)).count();
    if failed > 0 {
        println!("soak: {failed} checks FAILED");
        1
    } else {
        println!("soak: every check passed");
        0
    }
}
