//! The report: context, a table of figures with their ceilings, the Python original and the
//! budgets, notes, and one JSON line per figure (also saved to `<state>/last-run.jsonl`).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
};

use crate::{
    CONNECTIONS, Res,
    drain::Drain,
    figure::{Budget, Figure, python, with_cpu},
    procfs::{Memory, command_line, cores},
    settings::Settings,
    wrk::Load,
};

/// The run's context, figures and notes, printed at the end and saved as JSON lines.
pub struct Report {
    smoke: bool,
    context: Vec<(String, String)>,
    figures: Vec<Figure>,
    notes: Vec<String>,
}

impl Report {
    /// An empty report with the run's mode, date and machine.
    pub fn new(s: &Settings) -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, m)| m.trim().to_owned())
            })
            .unwrap_or_default();
        let mut report = Self {
            smoke: s.smoke,
            context: Vec::new(),
            figures: Vec::new(),
            notes: Vec::new(),
        };
        report.context(
            "mode",
            format!(
                "{} ({} s per figure after {} s warm-up, wrk -t1 -c{CONNECTIONS}, {} drain jobs)",
                if s.smoke { "smoke" } else { "full" },
                s.duration,
                s.warmup,
                s.drain_jobs
            ),
        );
        report.context("date", command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]));
        report.context("machine", format!("{} cores, {cpu}", cores()));
        report
    }

    /// One line of context above the table.
    pub fn context(&mut self, key: &str, value: String) {
        self.context.push((key.to_owned(), value));
    }

    /// One note below the table.
    pub fn note(&mut self, text: String) {
        self.notes.push(text);
    }

    /// The HTTP figures of the glibc API beside their ceilings.
    pub fn wrk_figures(
        &mut self,
        hyper: &Load,
        health: &Load,
        ready: &Load,
        post: &Load,
        direct: &Load,
    ) {
        self.figures.push(with_cpu(
            Figure::new("hyper_hello_rps", hyper.rps, "req/s"),
            hyper,
        ));
        self.figures.push(
            with_cpu(Figure::new("health_rps", health.rps, "req/s"), health)
                .ceiling(hyper.rps)
                .python(python::HEALTH_RPS)
                .budget(Budget::OfCeiling(0.7)),
        );
        self.figures
            .push(Figure::new("health_p50", health.p50_ms, "ms").ceiling(hyper.p50_ms));
        self.figures.push(
            Figure::new("health_p99", health.p99_ms, "ms")
                .ceiling(hyper.p99_ms)
                .python(python::HEALTH_P99_MS),
        );
        self.figures.push(
            // Readiness asks PostgreSQL and Redis each time: a ratio, but no budget.
            with_cpu(Figure::new("health_ready_rps", ready.rps, "req/s"), ready).ceiling(hyper.rps),
        );
        self.figures
            .push(Figure::new("health_ready_p50", ready.p50_ms, "ms").ceiling(hyper.p50_ms));
        self.figures
            .push(Figure::new("health_ready_p99", ready.p99_ms, "ms").ceiling(hyper.p99_ms));
        self.figures.push(
            with_cpu(
                Figure::new("post_enhancements_rps", post.rps, "req/s"),
                post,
            )
            .ceiling(direct.rps)
            .python(python::POST_RPS)
            .budget(Budget::OfCeilingAndPython(0.5, 10.0)),
        );
        self.figures
            .push(Figure::new("post_enhancements_p50", post.p50_ms, "ms").ceiling(direct.p50_ms));
        self.figures.push(
            Figure::new("post_enhancements_p99", post.p99_ms, "ms")
                .ceiling(direct.p99_ms)
                .python(python::POST_P99_MS),
        );
        self.note(format!("GET /health: {}", health.cpu_line()));
        self.note(format!("GET /health/ready: {}", ready.cpu_line()));
        self.note(format!("POST /api/v1/enhancements: {}", post.cpu_line()));
        self.note(format!(
            "POST ceiling (in-process loop): {}",
            direct.cpu.line("bench loop")
        ));
        for (name, load) in [
            ("hyper", hyper),
            ("/health", health),
            ("/health/ready", ready),
            ("POST", post),
        ] {
            if load.non_2xx > 0 || load.socket_errors > 0 {
                self.note(format!(
                    "WARNING {name}: {} non-2xx answers, {} socket errors",
                    load.non_2xx, load.socket_errors
                ));
            }
        }
    }

    /// The figures of the static musl API.
    pub fn musl_figures(
        &mut self,
        hyper: &Load,
        health: &Load,
        post: &Load,
        direct: &Load,
        idle: Memory,
    ) {
        self.figures.push(
            with_cpu(Figure::new("musl_health_rps", health.rps, "req/s"), health)
                .extra("p99_ms", health.p99_ms)
                .ceiling(hyper.rps)
                .python(python::HEALTH_RPS)
                .budget(Budget::OfCeiling(0.7)),
        );
        self.figures.push(
            with_cpu(
                Figure::new("musl_post_enhancements_rps", post.rps, "req/s"),
                post,
            )
            .extra("p99_ms", post.p99_ms)
            .ceiling(direct.rps)
            .python(python::POST_RPS)
            .budget(Budget::OfCeilingAndPython(0.5, 10.0)),
        );
        self.figures.push(
            Figure::new("musl_api_rss_idle", idle.rss_mib, "MiB")
                .python(python::API_RSS_MIB)
                .budget(Budget::Below(20.0))
                .extra("vmhwm_mib", idle.hwm_mib),
        );
        self.note(format!(
            "static musl API, GET /health: {}",
            health.cpu_line()
        ));
        self.note(format!("static musl API, POST: {}", post.cpu_line()));
    }

    /// The start-up figure: the median of `samples`.
    pub fn startup(&mut self, samples: &[f64]) {
        let f = Figure::new("startup_to_ready", median(samples), "ms")
            .python(python::STARTUP_MS)
            .budget(Budget::Below(100.0));
        self.figures.push(with_range(f, samples));
    }

    /// The worker's start-up before its drains: exec to its first read of the queue (Celery's
    /// figure: start to "ready").
    pub fn worker_startup(&mut self, samples: &[f64]) {
        let f = Figure::new("worker_startup_to_read", median(samples), "ms")
            .python(python::WORKER_STARTUP_MS);
        self.figures.push(with_range(f, samples));
    }

    /// The drain figures, keyed (concurrency, raw loop?).
    pub fn drains(&mut self, s: &Settings, drains: &BTreeMap<(usize, bool), (Drain, u64)>) {
        for concurrency in [4_usize, 16] {
            let (Some((worker, completed)), Some((raw, _))) = (
                drains.get(&(concurrency, false)),
                drains.get(&(concurrency, true)),
            ) else {
                continue;
            };
            let name = if concurrency == 4 {
                "drain_c4"
            } else {
                "drain_c16"
            };
            self.figures.push(
                Figure::new(name, worker.jobs_per_second(), "jobs/s")
                    .ceiling(raw.jobs_per_second())
                    .python(python::DRAIN_JOBS_S)
                    .budget(drain_budget(concurrency))
                    .extra("jobs", worker.jobs as f64)
                    .extra("seconds", worker.seconds)
                    .extra("worker_cpu_pct", worker.cpu.server)
                    .extra("ceiling_seconds", raw.seconds),
            );
            if worker.timed_out || raw.timed_out || *completed < s.drain_jobs as u64 {
                self.note(format!(
                    "WARNING drain c={concurrency}: worker {} jobs (timed out: {}), {completed} completed; raw loop timed out: {}",
                    worker.jobs, worker.timed_out, raw.timed_out
                ));
            }
        }
    }

    /// The memory figures.
    pub fn memory(
        &mut self,
        api_idle: Memory,
        api_loaded: Memory,
        worker_idle: Memory,
        worker_loaded: Option<Memory>,
    ) {
        self.figures.push(
            Figure::new("api_rss_idle", api_idle.rss_mib, "MiB")
                .python(python::API_RSS_MIB)
                .budget(Budget::Below(20.0))
                .extra("vmhwm_mib", api_idle.hwm_mib),
        );
        self.figures.push(
            Figure::new("api_rss_after_load", api_loaded.rss_mib, "MiB")
                .extra("vmhwm_mib", api_loaded.hwm_mib),
        );
        self.figures
            .push(Figure::new("api_peak_rss", api_loaded.hwm_mib, "MiB"));
        self.worker_memory(worker_idle, worker_loaded);
    }

    /// The worker's memory, idle and after its last drain.
    pub fn worker_memory(&mut self, worker_idle: Memory, worker_loaded: Option<Memory>) {
        self.figures.push(
            Figure::new("worker_rss_idle", worker_idle.rss_mib, "MiB")
                .python(python::WORKER_RSS_MIB)
                .budget(Budget::Below(20.0))
                .extra("vmhwm_mib", worker_idle.hwm_mib),
        );
        if let Some(m) = worker_loaded {
            self.figures.push(
                Figure::new("worker_rss_after_drain", m.rss_mib, "MiB")
                    .extra("vmhwm_mib", m.hwm_mib),
            );
            self.figures
                .push(Figure::new("worker_peak_rss", m.hwm_mib, "MiB"));
        }
    }

    /// The binaries' sizes.
    pub fn sizes(&mut self, s: &Settings, musl: Option<PathBuf>) {
        let mib = |p: &Path| {
            std::fs::metadata(p)
                .ok()
                .map(|m| m.len() as f64 / 1_048_576.0)
        };
        if let Some(dir) = musl {
            for (name, bin) in [
                ("api_binary_musl", "ai-agents-api"),
                ("worker_binary_musl", "ai-agents-worker"),
            ] {
                if let Some(size) = mib(&dir.join(bin)) {
                    self.figures.push(
                        Figure::new(name, size, "MiB")
                            .python(python::DEPS_MIB)
                            .budget(Budget::Below(15.0)),
                    );
                }
            }
        }
        if s.bins_are_static() {
            return;
        }
        for (name, bin) in [
            ("api_binary_glibc", "ai-agents-api"),
            ("worker_binary_glibc", "ai-agents-worker"),
        ] {
            if let Some(size) = mib(&s.bin(bin)) {
                self.figures.push(Figure::new(name, size, "MiB"));
            }
        }
    }

    /// The table, the notes and the JSON lines on stdout.
    pub fn print(&self) {
        let mut out = String::new();
        let _ = writeln!(out, "\nai-agents service benchmark");
        for (k, v) in &self.context {
            let _ = writeln!(out, "  {k:<22} {v}");
        }
        let _ = writeln!(out, "\n{}", Figure::table_head());
        for f in &self.figures {
            let _ = writeln!(out, "{}", f.row());
        }
        let _ = writeln!(
            out,
            "\nratio = value / ceiling (for latencies above 1 means slower); vs Py = times better than the Python original (rates: value / Python; times, sizes: Python / value)."
        );
        if self.smoke {
            let _ = writeln!(out, "smoke mode: short runs, figures are indicative only.");
        }
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        let _ = writeln!(out);
        for f in &self.figures {
            let _ = writeln!(out, "{}", f.json());
        }
        print!("{out}");
    }

    /// The JSON lines to `path`.
    pub fn save(&self, path: &Path) -> Res<()> {
        let mut text = String::new();
        for f in &self.figures {
            text.push_str(&f.json());
            text.push('\n');
        }
        std::fs::write(path, text)?;
        eprintln!("bench: JSON lines also written to {}", path.display());
        Ok(())
    }
}

/// The worker's drain budget at a concurrency (issue 13): batching its database work should
/// let it beat the one-job-at-a-time raw loop, by more where more slots share each batch, and
/// keep it at 15× Celery's figure of the day.
fn drain_budget(concurrency: usize) -> Budget {
    let of_raw_loop = if concurrency >= 16 { 1.5 } else { 1.0 };
    Budget::OfCeilingAndPython(of_raw_loop, 15.0)
}

/// The middle of `samples` (0 when there are none).
fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n.is_multiple_of(2) => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        n => sorted[n / 2],
    }
}

/// `f` with the smallest and largest of its `samples`.
fn with_range(f: Figure, samples: &[f64]) -> Figure {
    let min = samples.iter().copied().reduce(f64::min);
    let max = samples.iter().copied().reduce(f64::max);
    match (min, max) {
        (Some(min), Some(max)) => f.extra("min_ms", min).extra("max_ms", max),
        _ => f,
    }
}
