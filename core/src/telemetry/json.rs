//! JSON log lines: `timestamp`, `level` and `message` first, then the event's fields, then the
//! fields of the spans it happened in, all at the top level. An item's events happen in its
//! span (see [`crate::runner`]), so each carries the item's `run`, `key`, `stage` and
//! `attempt`, whichever part of the code (a stage crate, a plugin host) emitted it.

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The event formatter of `--log-format json` (fields of spans recorded by
/// [`tracing_subscriber::fmt::format::JsonFields`]).
pub(super) struct JsonLine;

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let Fields {
            message,
            mut fields,
        } = fields;
        if let Some(scope) = ctx.event_scope() {
            // The innermost span's value wins; the event's own fields win over all.
            for span in scope {
                let extensions = span.extensions();
                let Some(recorded) = extensions.get::<FormattedFields<N>>() else {
                    continue;
                };
                if let Ok(serde_json::Value::Object(map)) =
                    serde_json::from_str::<serde_json::Value>(recorded.fields.as_str())
                {
                    for (key, value) in map {
                        fields.entry(key).or_insert(value);
                    }
                }
            }
        }
        let line = super::event_line(event.metadata().level().as_str(), &message, fields);
        writer.write_str(&String::from_utf8_lossy(&line))
    }
}

/// An event's message and its other fields, typed as recorded.
#[derive(Default)]
struct Fields {
    message: String,
    fields: serde_json::Map<String, serde_json::Value>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: serde_json::Value) {
        if field.name() == "message" {
            self.message = match value {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
        } else {
            self.fields.insert(field.name().to_owned(), value);
        }
    }
}

impl Visit for Fields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, serde_json::Value::from(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, serde_json::Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, serde_json::Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, serde_json::Value::from(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, serde_json::Value::from(value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, serde_json::Value::from(value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, serde_json::Value::from(format!("{value:?}")));
    }
}
