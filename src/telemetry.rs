//! Logging: one JSON object per line in production, readable lines in development.
//!
//! Every JSON line carries the same top-level keys — `timestamp`, `level`, `target`, `service`,
//! `environment`, `message` — plus the fields of the event and of the spans it happened in, so
//! a line logged inside a request carries that request's `request_id`, `method`, `route`,
//! `status` and `latency_ms` next to its own fields. Log shippers then need no per-service
//! parsing rules.
//!
//! That shape is written by [`JsonLayer`], not by tracing-subscriber's JSON formatter
//! (`fmt::layer().json()`, 0.3), which cannot produce it:
//!
//! * it has no fixed fields: `service` and `environment` cannot be put on every line (a root
//!   span holding them would show them under `span`/`spans`, and only inside that span);
//! * it never lifts span fields to the top level: with `with_current_span` and
//!   `with_span_list` they come nested under `span` (the innermost span only) and `spans`, so
//!   `request_id` would sit at a different path on every kind of line;
//! * an event field named like a fixed key (`level`, `timestamp`, `target`) is written as a
//!   second entry with the same key, which JSON parsers resolve differently; here it becomes
//!   `field.level`;
//! * an error field is written as its top-level message only (`Display`); here it is the
//!   whole cause chain ([`error_chain`]), which is what says what went wrong.

use std::{fmt, io::Write};

use serde_json::{Map, Value};
use tracing::{
    Event, Subscriber,
    field::{Field, Visit},
    span::{Attributes, Id, Record},
};
use tracing_subscriber::{
    EnvFilter, Layer, layer::Context, layer::SubscriberExt, registry::LookupSpan,
    util::SubscriberInitExt,
};

use crate::config::{Config, LogFormat};

/// Installs the global subscriber for `service` (`api` or `worker`).
///
/// Safe to call more than once (tests): later calls keep the first subscriber.
pub fn init(service: &'static str, config: &Config) {
    let mut filter =
        EnvFilter::try_new(&config.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    // PostgreSQL's NOTICEs (e.g. "already exists, skipping" from re-run migrations) are noise.
    if !config.log_level.contains("sqlx::postgres::notice")
        && let Ok(directive) = "sqlx::postgres::notice=warn".parse()
    {
        filter = filter.add_directive(directive);
    }
    let result = match config.log_format {
        LogFormat::Json => tracing_subscriber::registry()
            .with(filter)
            .with(JsonLayer::new(
                service,
                config.environment.as_str(),
                std::io::stdout,
            ))
            .try_init(),
        LogFormat::Pretty => tracing_subscriber::registry()
            .with(filter)
            .with(tracing_subscriber::fmt::layer().with_target(true))
            .try_init(),
    };
    // Already initialised (several apps in one test process) is fine.
    drop(result);
}

/// An error and its causes on one line, `error: cause: root cause`, each text once.
///
/// Used for log fields and for the one-line error a binary prints on exit. Many errors
/// (sqlx's among them) already put their source into their own message; a cause whose text
/// is already on the line is left out instead of being repeated.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A layer that writes each event as one JSON object per line to `make_writer()`.
pub struct JsonLayer<W> {
    service: &'static str,
    environment: &'static str,
    make_writer: W,
}

impl<W> JsonLayer<W> {
    /// Lines will carry `service` and `environment` as top-level keys.
    pub fn new(service: &'static str, environment: &'static str, make_writer: W) -> Self {
        Self {
            service,
            environment,
            make_writer,
        }
    }
}

/// Span fields, kept in the span's extensions until it closes.
struct SpanFields(Map<String, Value>);

struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for JsonVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().to_owned(), Value::String(value.to_owned()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        // Keep the whole cause chain: the top error alone rarely says what went wrong.
        self.0
            .insert(field.name().to_owned(), Value::String(error_chain(value)));
    }
}

impl<S, W> Layer<S> for JsonLayer<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + 'static,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Map::new();
        attrs.record(&mut JsonVisitor(&mut fields));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(fields));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            let mut extensions = span.extensions_mut();
            if let Some(SpanFields(fields)) = extensions.get_mut::<SpanFields>() {
                values.record(&mut JsonVisitor(fields));
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            Value::String(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        );
        line.insert(
            "level".into(),
            Value::String(meta.level().as_str().to_owned()),
        );
        line.insert("target".into(), Value::String(meta.target().to_owned()));
        line.insert("service".into(), Value::String(self.service.to_owned()));
        line.insert(
            "environment".into(),
            Value::String(self.environment.to_owned()),
        );
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(SpanFields(fields)) = span.extensions().get::<SpanFields>() {
                    for (k, v) in fields {
                        line.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        let mut fields = Map::new();
        event.record(&mut JsonVisitor(&mut fields));
        for (k, v) in fields {
            // Never let an event field shadow the fixed keys.
            let key = match k.as_str() {
                "timestamp" | "level" | "target" | "service" | "environment" => {
                    format!("field.{k}")
                }
                _ => k,
            };
            line.insert(key, v);
        }
        if let Ok(mut text) = serde_json::to_vec(&Value::Object(line)) {
            text.push(b'\n');
            let mut writer = self.make_writer.make_writer();
            let _ = writer.write_all(&text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_is_json_with_the_fixed_keys() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber =
            tracing_subscriber::registry()
                .with(JsonLayer::new("api", "test", move || writer.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request", request_id = "abc");
            let _guard = span.enter();
            tracing::info!(status = 200_u64, "done");
            tracing::warn!(level = "shadow", "second");
        });
        let bytes = buffer.0.lock().expect("lock").clone();
        let text = String::from_utf8(bytes).expect("utf8");
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect();
        assert_eq!(lines.len(), 2);
        for line in &lines {
            for key in [
                "timestamp",
                "level",
                "target",
                "service",
                "environment",
                "message",
            ] {
                assert!(line.get(key).is_some(), "{key} missing in {line}");
            }
            assert_eq!(line["service"], "api");
            assert_eq!(line["request_id"], "abc");
        }
        assert_eq!(lines[0]["status"], 200);
        assert_eq!(lines[1]["level"], "WARN");
        assert_eq!(lines[1]["field.level"], "shadow");
    }
}
