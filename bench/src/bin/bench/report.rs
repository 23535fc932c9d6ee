//! The results as files: CSV per table, the SVG figure, and a markdown summary (printed
//! too) with the seed's published numbers beside ours and each target read off the run.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::Path;
use std::process::Command;

use crate::measure::Metric;
use crate::plot::{self, SEED_THROUGHPUT};
use crate::stats::{ms, Lat, Summary};
use crate::sweep::{Step, MIX};
use crate::Settings;

const SEARCH: usize = 2;

/// Writes every table, the figure and the summary into `out`; returns the number of failed
/// calls in the whole run.
pub fn write(
    out: &Path,
    settings: &Settings,
    core: &[Metric],
    steps: &[Step],
) -> io::Result<usize> {
    let under_load = search_under_load(steps);
    fs::write(out.join("core.csv"), core_csv(core, under_load))?;
    fs::write(out.join("core_samples.csv"), samples_csv(core, under_load))?;
    if !steps.is_empty() {
        fs::write(out.join("sweep.csv"), sweep_csv(steps))?;
        fs::write(out.join("sweep_ops.csv"), sweep_ops_csv(steps))?;
        let title = format!(
            "nap scalability sweep: {} s per phase, fresh primary + shadow per step, {}",
            settings.seconds.as_secs_f64(),
            machine()
        );
        plot::draw(&out.join("sweep.svg"), steps, &title).map_err(io::Error::other)?;
    }
    let summary = summary(settings, core, steps);
    fs::write(out.join("summary.md"), &summary)?;
    println!("{summary}");
    println!("(tables, figure and summary in {})", out.display());
    let errors = core.iter().map(|m| m.errors).sum::<usize>()
        + steps.iter().map(Step::errors).sum::<usize>();
    Ok(errors)
}

/// The step whose search latency stands for "search latency under load": 100 peers, as in
/// the seed's load test, or the nearest step measured.
fn search_under_load(steps: &[Step]) -> Option<(&Step, &Lat)> {
    steps
        .iter()
        .min_by_key(|s| s.peers.abs_diff(100))
        .map(|s| (s, &s.mix.ops[SEARCH].lat))
}

fn core_csv(core: &[Metric], under_load: Option<(&Step, &Lat)>) -> String {
    let mut csv =
        String::from("metric,samples,mean_ms,p50_ms,p99_ms,max_ms,errors,seed_ms,description\n");
    let mut row = |key: &str, name: &str, s: Summary, errors: usize, seed: Option<f64>| {
        let seed = seed.map_or(String::new(), |v| format!("{v}"));
        let _ = writeln!(
            csv,
            "{key},{},{:.3},{:.3},{:.3},{:.3},{errors},{seed},\"{name}\"",
            s.n, s.mean, s.p50, s.p99, s.max
        );
    };
    for m in core {
        row(m.key, &m.name, m.lat.summary(), m.errors, m.seed_ms);
    }
    if let Some((step, lat)) = under_load {
        let name = format!("search latency under load ({} peers, mix)", step.peers);
        row(
            "search_under_load",
            &name,
            lat.summary(),
            step.mix.ops[SEARCH].errors,
            Some(28.94),
        );
    }
    csv
}

fn samples_csv(core: &[Metric], under_load: Option<(&Step, &Lat)>) -> String {
    let mut csv = String::from("metric,sample,ms\n");
    let metrics = core.iter().map(|m| (m.key, &m.lat));
    for (key, lat) in metrics.chain(under_load.map(|(_, lat)| ("search_under_load", lat))) {
        for (n, v) in lat.samples_ms().enumerate() {
            let _ = writeln!(csv, "{key},{n},{v:.3}");
        }
    }
    csv
}

fn sweep_csv(steps: &[Step]) -> String {
    let mut csv = String::from(
        "peers,seconds,mix_ops,mix_ops_per_s,mix_requests_per_s,errors,error_rate,failovers,\
         search_ops_per_s,ceiling_ops_per_s,search_vs_ceiling,index_rss_mib,index_peak_mib,\
         files,seq,shadow_in_sync\n",
    );
    for s in steps {
        let _ = writeln!(
            csv,
            "{},{:.1},{},{:.1},{:.1},{},{:.6},{},{:.1},{:.1},{:.3},{:.1},{:.1},{},{},{}",
            s.peers,
            s.mix.window,
            s.mix.done(),
            s.mix.per_s(),
            s.mix.requests_per_s(),
            s.errors(),
            s.mix.error_rate(),
            s.mix.failovers + s.search.failovers + s.ceiling.failovers,
            s.search.per_s(),
            s.ceiling.per_s(),
            ratio(s.search.per_s(), s.ceiling.per_s()),
            s.rss_mib,
            s.peak_mib,
            s.files,
            s.seq,
            s.shadow_in_sync,
        );
    }
    csv
}

fn sweep_ops_csv(steps: &[Step]) -> String {
    let mut csv =
        String::from("peers,phase,op,calls,ops_per_s,mean_ms,p50_ms,p99_ms,max_ms,errors\n");
    for s in steps {
        let phases = MIX
            .iter()
            .enumerate()
            .map(|(k, op)| ("mix", *op, &s.mix.ops[k], s.mix.window))
            .chain([
                ("search", "search", &s.search.ops[0], s.search.window),
                ("ceiling", "health", &s.ceiling.ops[0], s.ceiling.window),
            ]);
        for (phase, op, tally, window) in phases {
            let l = tally.lat.summary();
            let _ = writeln!(
                csv,
                "{},{phase},{op},{},{:.1},{:.3},{:.3},{:.3},{:.3},{}",
                s.peers,
                l.n,
                tally.done as f64 / window,
                l.mean,
                l.p50,
                l.p99,
                l.max,
                tally.errors
            );
        }
    }
    csv
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

/// Cores and CPU model of this machine.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cores} cores ({model})")
}

/// The output of a command, trimmed, or "" when it cannot run.
fn output_of(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn summary(settings: &Settings, core: &[Metric], steps: &[Step]) -> String {
    let mut md = String::new();
    let commit = output_of("git", &["rev-parse", "--short", "HEAD"]);
    let _ = writeln!(
        md,
        "## nap evaluation{}: {}, commit {}, {}\n",
        if settings.quick { " (--quick)" } else { "" },
        output_of("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        if commit.is_empty() { "?" } else { &commit },
        machine(),
    );
    let _ = writeln!(
        md,
        "Load generator on the same machine; indexes {}; client timeout {} s per phase.\n",
        if settings.in_memory {
            "in memory"
        } else {
            "with a data directory (--fsync always)"
        },
        settings.timeout.as_secs_f64()
    );

    let under_load = search_under_load(steps);
    if !core.is_empty() || under_load.is_some() {
        md.push_str(
            "| metric | seed (published) | samples | p50 ms | p99 ms | max ms | errors |\n",
        );
        md.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
        let mut row = |name: &str, seed: Option<f64>, s: Summary, errors: usize| {
            let seed = seed.map_or("-".to_string(), |v| format!("{v:.2} ms"));
            let _ = writeln!(
                md,
                "| {name} | {seed} | {} | {} | {} | {} | {errors} |",
                s.n,
                ms(s.p50),
                ms(s.p99),
                ms(s.max)
            );
        };
        for m in core {
            row(&m.name, m.seed_ms, m.lat.summary(), m.errors);
        }
        if let Some((step, lat)) = under_load {
            let name = format!("search latency under load ({} peers, mix)", step.peers);
            row(
                &name,
                Some(28.94),
                lat.summary(),
                step.mix.ops[SEARCH].errors,
            );
        }
        md.push('\n');
    }

    if !steps.is_empty() {
        let _ = writeln!(
            md,
            "Sweep: {} s per phase, a fresh primary + shadow per step{}. Latency cells: \
             p50 / p99 ms.\n",
            settings.seconds.as_secs_f64(),
            if settings.think.is_zero() {
                String::from(", peers call back to back")
            } else {
                format!(
                    ", each peer pausing {} ms after each call",
                    settings.think.as_millis()
                )
            },
        );
        md.push_str(
            "| peers | mix ops/s | seed ops/s | register | heartbeat | search | publish | \
             errors | search-only ops/s | ceiling ops/s | search / ceiling | index RSS MiB | \
             shadow in sync |\n",
        );
        md.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
        for s in steps {
            let seed = SEED_THROUGHPUT
                .iter()
                .find(|(n, _)| *n == s.peers)
                .map_or("-".to_string(), |(_, v)| format!("{v}"));
            let cell = |k: usize| {
                let l = s.mix.ops[k].lat.summary();
                format!("{} / {}", ms(l.p50), ms(l.p99))
            };
            let _ = writeln!(
                md,
                "| {} | {:.0} | {seed} | {} | {} | {} | {} | {} | {:.0} | {:.0} | {:.0}% | {:.0} | {} |",
                s.peers,
                s.mix.per_s(),
                cell(0),
                cell(1),
                cell(2),
                cell(3),
                s.errors(),
                s.search.per_s(),
                s.ceiling.per_s(),
                100.0 * ratio(s.search.per_s(), s.ceiling.per_s()),
                s.rss_mib,
                if s.shadow_in_sync { "yes" } else { "NO" },
            );
        }
        md.push('\n');
    }
    md.push_str(&targets(core, steps));
    md
}

/// Each of the targets, read off this run: measured, not asserted.
fn targets(core: &[Metric], steps: &[Step]) -> String {
    let mut lines = Vec::new();
    let mut target = |what: &str, measured: String, met: bool| {
        lines.push(format!(
            "- {what}: {measured} ({})",
            if met { "met" } else { "missed" }
        ));
    };
    if steps.len() > 1 {
        let rates: Vec<f64> = steps.iter().map(|s| s.mix.per_s()).collect();
        let (lo, hi) = rates.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
        let spread = 1.0 - ratio(lo, hi);
        let errors: usize = steps.iter().map(Step::errors).sum();
        target(
            "mix throughput flat within 20% across the steps, no errors",
            format!(
                "lowest step {:.0}% below the highest, {errors} errors",
                spread * 100.0
            ),
            spread <= 0.2 && errors == 0,
        );
    }
    if let Some(s) = steps.iter().find(|s| s.peers == 500) {
        let p99 = s.mix.ops[SEARCH].lat.summary().p99;
        target(
            "p99 search latency under 5 ms at 500 peers",
            format!("{} ms", ms(p99)),
            p99 < 5.0,
        );
    }
    if let Some(s) = steps.iter().find(|s| s.peers == 100) {
        let r = ratio(s.search.per_s(), s.ceiling.per_s());
        target(
            "search throughput at 100 peers at least 70% of the ceiling's",
            format!("{:.0}%", r * 100.0),
            r >= 0.7,
        );
    }
    let p50 = |key: &str| {
        core.iter()
            .find(|m| m.key == key)
            .map(|m| m.lat.summary().p50)
    };
    if let Some(v) = p50("write") {
        target(
            "write latency p50 under 1 ms",
            format!("{} ms", ms(v)),
            v < 1.0,
        );
    }
    if let Some(v) = p50("failover_kill") {
        target(
            "failover recovery (killed primary) under 5 ms",
            format!("p50 {} ms", ms(v)),
            v < 5.0,
        );
    }
    if let Some(v) = p50("convergence") {
        target(
            "replication convergence under 50 ms from the index learning of the file",
            format!("p50 {} ms", ms(v)),
            v < 50.0,
        );
    }
    if lines.is_empty() {
        return String::new();
    }
    format!("Targets (on this run):\n{}\n", lines.join("\n"))
}
