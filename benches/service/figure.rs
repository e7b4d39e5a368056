//! One figure of the report: its value beside its ceiling, the Python original and its budget;
//! one row of the table and one JSON line.

use crate::wrk::Load;

/// The Python original on the same machine kind (shared/PEER-FIGURES.md): the figures of
/// 2026-11-30 where that day re-measured them (compare against the figure of the day), those of
/// 2026-11-29 for the rest.
pub mod python {
    /// `GET /health`, 1 uvicorn worker, access log off (2026-11-30).
    pub const HEALTH_RPS: f64 = 6407.0;
    /// Its p99 (7.5–10 ms, 2026-11-29): the better end.
    pub const HEALTH_P99_MS: f64 = 7.5;
    /// `POST /api/v1/enhancements`, 1 worker, access log off (2026-11-30).
    pub const POST_RPS: f64 = 269.0;
    /// Its p99 (2026-11-29).
    pub const POST_P99_MS: f64 = 213.0;
    /// Celery prefork 4, 5,000 placeholder enhancement jobs (2026-11-30).
    pub const DRAIN_JOBS_S: f64 = 253.0;
    /// API start to first 200 from `/health/ready` (2026-11-30).
    pub const STARTUP_MS: f64 = 1400.0;
    /// Celery worker start to ready (2026-11-30).
    pub const WORKER_STARTUP_MS: f64 = 2990.0;
    /// Idle RSS of the API, 1 uvicorn worker (2026-11-30).
    pub const API_RSS_MIB: f64 = 97.6;
    /// Idle RSS of the Celery worker, 5 processes.
    pub const WORKER_RSS_MIB: f64 = 385.0;
    /// Python dependencies: 141 MB.
    pub const DEPS_MIB: f64 = 141.0e6 / 1_048_576.0;
}

/// One figure of the table and of the JSON lines.
pub struct Figure {
    name: &'static str,
    value: f64,
    unit: &'static str,
    ceiling: Option<f64>,
    python: Option<f64>,
    budget: Budget,
    extra: Vec<(&'static str, f64)>,
}

/// What a figure must reach to count as met.
#[derive(Clone, Copy)]
pub enum Budget {
    /// Reported only.
    None,
    /// value ≥ factor × ceiling
    OfCeiling(f64),
    /// value ≥ factor × ceiling and ≥ times × Python
    OfCeilingAndPython(f64, f64),
    /// value < limit
    Below(f64),
}

impl Budget {
    /// As the table shows it.
    fn text(self) -> String {
        match self {
            Self::None => String::new(),
            Self::OfCeiling(f) => format!(">= {f}x ceiling"),
            Self::OfCeilingAndPython(f, p) => format!(">= {f}x ceiling, >= {p}x Python"),
            Self::Below(limit) => format!("< {limit}"),
        }
    }
}

/// `f` with the CPU shares and error counts of the wrk run it comes from.
pub fn with_cpu(f: Figure, l: &Load) -> Figure {
    f.extra("wrk_cpu_pct", l.cpu.load)
        .extra("server_cpu_pct", l.cpu.server)
        .extra("non_2xx", l.non_2xx as f64)
        .extra("socket_errors", l.socket_errors as f64)
}

impl Figure {
    /// `value` in `unit`, named `name` in the table and the JSON lines.
    pub fn new(name: &'static str, value: f64, unit: &'static str) -> Self {
        Self {
            name,
            value,
            unit,
            ceiling: None,
            python: None,
            budget: Budget::None,
            extra: Vec::new(),
        }
    }
    /// With the ceiling it is compared with.
    pub fn ceiling(mut self, c: f64) -> Self {
        self.ceiling = Some(c);
        self
    }
    /// With the Python original's figure.
    pub fn python(mut self, p: f64) -> Self {
        self.python = Some(p);
        self
    }
    /// With a budget.
    pub fn budget(mut self, b: Budget) -> Self {
        self.budget = b;
        self
    }
    /// With one more number in its JSON line.
    pub fn extra(mut self, key: &'static str, v: f64) -> Self {
        self.extra.push((key, v));
        self
    }
    /// value ÷ ceiling.
    fn ratio(&self) -> Option<f64> {
        self.ceiling.filter(|c| *c > 0.0).map(|c| self.value / c)
    }
    /// How many times the Python figure: for rates value ÷ Python, for times and sizes
    /// Python ÷ value (so above 1 is better either way).
    fn vs_python(&self) -> Option<f64> {
        let p = self.python?;
        if self.value <= 0.0 {
            return None;
        }
        Some(if self.higher_is_better() {
            self.value / p
        } else {
            p / self.value
        })
    }
    /// Rates are better higher; times and sizes lower.
    fn higher_is_better(&self) -> bool {
        self.unit.ends_with("/s")
    }
    /// Whether the budget holds (`None`: no budget, or nothing to compare with).
    fn met(&self) -> Option<bool> {
        match self.budget {
            Budget::None => None,
            Budget::OfCeiling(f) => self.ratio().map(|r| r >= f),
            Budget::OfCeilingAndPython(f, p) => Some(self.ratio()? >= f && self.vs_python()? >= p),
            Budget::Below(limit) => Some(self.value < limit),
        }
    }
    /// The header and the rule of the table whose rows are [`Figure::row`].
    pub fn table_head() -> String {
        format!(
            "| {:<24} | {:>10} | {:<6} | {:>10} | {:>7} | {:>9} | {:>8} | {:<30} | {:<4} |\n\
             |{:-<26}|{:->12}|{:-<8}|{:->12}|{:->9}|{:->11}|{:->10}|{:-<32}|{:-<6}|",
            "figure",
            "value",
            "unit",
            "ceiling",
            "ratio",
            "Python",
            "vs Py",
            "budget",
            "met",
            "",
            "",
            "",
            "",
            "",
            "",
            "",
            "",
            ""
        )
    }

    /// Its row of the table.
    pub fn row(&self) -> String {
        let fmt = |v: Option<f64>, decimals: usize| {
            v.map_or_else(|| "-".to_owned(), |v| format!("{v:.decimals$}"))
        };
        let decimals = if self.value >= 1000.0 {
            0
        } else if self.value >= 10.0 {
            1
        } else {
            2
        };
        format!(
            "| {:<24} | {:>10} | {:<6} | {:>10} | {:>7} | {:>9} | {:>8} | {:<30} | {:<4} |",
            self.name,
            fmt(Some(self.value), decimals),
            self.unit,
            fmt(self.ceiling, decimals),
            fmt(self.ratio(), 2) + if self.ratio().is_some() { "x" } else { "" },
            fmt(self.python, 1),
            fmt(self.vs_python(), 1) + if self.vs_python().is_some() { "x" } else { "" },
            self.budget.text(),
            match self.met() {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "",
            }
        )
    }

    /// Its JSON line.
    pub fn json(&self) -> String {
        let mut object = serde_json::Map::new();
        let num = |v: f64| {
            serde_json::Number::from_f64((v * 1000.0).round() / 1000.0)
                .map_or(serde_json::Value::Null, serde_json::Value::Number)
        };
        let opt = |v: Option<f64>| v.map_or(serde_json::Value::Null, num);
        object.insert("figure".into(), self.name.into());
        object.insert("value".into(), num(self.value));
        object.insert("unit".into(), self.unit.into());
        object.insert("ceiling".into(), opt(self.ceiling));
        object.insert("ratio".into(), opt(self.ratio()));
        object.insert("python".into(), opt(self.python));
        object.insert("vs_python".into(), opt(self.vs_python()));
        let budget = self.budget.text();
        object.insert(
            "budget".into(),
            if budget.is_empty() {
                serde_json::Value::Null
            } else {
                budget.into()
            },
        );
        object.insert(
            "budget_met".into(),
            self.met()
                .map_or(serde_json::Value::Null, serde_json::Value::Bool),
        );
        for (key, v) in &self.extra {
            object.insert((*key).into(), num(*v));
        }
        serde_json::Value::Object(object).to_string()
    }
}
