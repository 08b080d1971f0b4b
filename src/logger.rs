//! `env_logger` behind a filter that keeps the webhook key and library noise out of the logs.
//!
//! attohttpc logs the full request URL, key included, at debug level: its records are dropped
//! below info whatever `RUST_LOG` says. may_minihttp logs every ordinary connection close at
//! error level ("service err = read closed"): its records are demoted to debug.
//!
//! Our log lines are a message followed by `key=value` fields (`robot=ops errcode=93000`).
//! `--log-format logfmt|json` splits them into fields for log collectors; the text stays
//! env_logger's human layout. A value runs up to the next ` key=`, so an error text with
//! spaces stays one value; a value written with `{:?}` is unquoted.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use log::{Level, Log, Metadata, Record};

use crate::time::{format_rfc3339_utc, Timestamp};

struct Filtered {
    inner: env_logger::Logger,
}

fn demoted(target: &str, level: Level) -> Option<Level> {
    if target.starts_with("attohttpc") {
        return (level <= Level::Info).then_some(level);
    }
    if target.starts_with("may_minihttp") || target.starts_with("may::") || target == "may" {
        return Some(Level::Debug.max(level));
    }
    Some(level)
}

impl Log for Filtered {
    fn enabled(&self, metadata: &Metadata) -> bool {
        match demoted(metadata.target(), metadata.level()) {
            Some(level) => self
                .inner
                .enabled(&Metadata::builder().level(level).target(metadata.target()).build()),
            None => false,
        }
    }

    fn log(&self, record: &Record) {
        let Some(level) = demoted(record.target(), record.level()) else {
            return;
        };
        if level == record.level() {
            if self.inner.matches(record) {
                self.inner.log(record);
            }
            return;
        }
        let rewritten = Record::builder()
            .args(*record.args())
            .level(level)
            .target(record.target())
            .module_path(record.module_path())
            .file(record.file())
            .line(record.line())
            .build();
        if self.inner.matches(&rewritten) {
            self.inner.log(&rewritten);
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// Installs the logger: `RUST_LOG` as usual, `info` when unset; lines in `format`.
pub fn init(format: LogFormat) {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    // Every layout is written here, the text one as env_logger's own
    // (`[2026-12-02T08:23:18Z INFO ] message`): env_logger's timestamps would pull in a
    // date-time library (jiff, about 100 kB of the static binary) for what `time` does.
    builder.format(move |buf, record| {
        use std::io::Write;
        if format == LogFormat::Text {
            let ts = now_rfc3339_seconds();
            return writeln!(buf, "[{ts} {:<5}] {}", record.level(), record.args());
        }
        let ts = now_rfc3339();
        let level = record.level().as_str().to_ascii_lowercase();
        writeln!(buf, "{}", structured(format, &ts, &level, &record.args().to_string()))
    });
    let inner = builder.build();
    let max = inner.filter();
    if log::set_boxed_logger(Box::new(Filtered { inner })).is_ok() {
        log::set_max_level(max);
    }
}

/// `--log-format`: text for people (env_logger's layout), logfmt or JSON for collectors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Logfmt,
    Json,
}

impl LogFormat {
    pub fn parse(s: &str) -> Result<LogFormat, String> {
        match s.trim() {
            "text" => Ok(LogFormat::Text),
            "logfmt" => Ok(LogFormat::Logfmt),
            "json" => Ok(LogFormat::Json),
            _ => Err("expected text, logfmt or json".into()),
        }
    }
}

/// `2026-12-02T08:23:18Z`: the text layout's timestamp, to the second.
fn now_rfc3339_seconds() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let ms = format_rfc3339_utc(Timestamp { unix_seconds: now.as_secs() as i64, nanos: 0 });
    ms.replace(".000Z", "Z")
}

fn now_rfc3339() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    format_rfc3339_utc(Timestamp { unix_seconds: now.as_secs() as i64, nanos: now.subsec_nanos() })
}

/// Splits `message key=value key2="quoted value"` into the message and its fields.
pub fn fields(text: &str) -> (String, Vec<(String, String)>) {
    let starts_field = |tok: &str| {
        tok.split_once('=').is_some_and(|(k, _)| {
            !k.is_empty()
                && k.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
                && k.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
    };
    let mut message = Vec::new();
    let mut out: Vec<(String, String)> = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        // A quoted value may hold spaces and '=': take it whole.
        let tok_end = rest.find(' ').unwrap_or(rest.len());
        let tok = &rest[..tok_end];
        if starts_field(tok) {
            let (k, v) = tok.split_once('=').unwrap_or((tok, ""));
            let key = k.to_string();
            let after_eq = &rest[k.len() + 1..];
            if v.starts_with('"') {
                if let Some((value, used)) = quoted(after_eq) {
                    out.push((key, value));
                    rest = after_eq[used..].trim_start_matches(' ');
                    continue;
                }
            }
            out.push((key, v.to_string()));
        } else if let Some(last) = out.last_mut() {
            last.1.push(' ');
            last.1.push_str(tok);
        } else {
            message.push(tok);
        }
        rest = rest[tok_end..].trim_start_matches(' ');
    }
    (message.join(" "), out)
}

/// A Rust `{:?}` string at the start of `s`: its value and the bytes it used.
fn quoted(s: &str) -> Option<(String, usize)> {
    let mut out = String::new();
    let mut chars = s.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, i + 1)),
            '\\' => match chars.next()?.1 {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

fn logfmt_value(v: &str) -> String {
    if !v.is_empty() && !v.contains(|c: char| c == ' ' || c == '"' || c == '=' || c.is_control()) {
        return v.to_string();
    }
    let mut out = String::from("\"");
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One log line as logfmt (`ts=… level=info msg="…" robot=ops`) or a JSON object.
pub fn structured(format: LogFormat, ts: &str, level: &str, text: &str) -> String {
    let (msg, pairs) = fields(text);
    let mut all = vec![("ts".to_string(), ts.to_string()), ("level".into(), level.to_string())];
    all.push(("msg".into(), msg));
    // A field named like a fixed one keeps its value under a prefixed key.
    all.extend(pairs.into_iter().map(|(k, v)| {
        if matches!(k.as_str(), "ts" | "level" | "msg") {
            (format!("field_{k}"), v)
        } else {
            (k, v)
        }
    }));
    match format {
        LogFormat::Json => {
            // Inserted one by one, not collected: `collect` into the map sorts first, with a
            // copy of the standard sort of its own (#18, binary size). A later equal key wins
            // either way.
            let mut map = serde_json::Map::new();
            for (k, v) in all {
                map.insert(k, serde_json::Value::String(v));
            }
            serde_json::Value::Object(map).to_string()
        }
        _ => {
            let mut line = String::new();
            for (k, v) in all {
                if !line.is_empty() {
                    line.push(' ');
                }
                let _ = write!(line, "{k}={}", logfmt_value(&v));
            }
            line
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_split_message_and_values() {
        let (msg, f) = fields(
            "send failed, will retry robot=ops errcode=-1 error=timed out receiver=\"a b=c\" n=3",
        );
        assert_eq!(msg, "send failed, will retry");
        let want = [
            ("robot", "ops"),
            ("errcode", "-1"),
            ("error", "timed out"),
            ("receiver", "a b=c"),
            ("n", "3"),
        ];
        let got: Vec<(&str, &str)> = f.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn logfmt_and_json_lines() {
        let line = structured(LogFormat::Logfmt, "T", "info", "queued robot=a b x=\"q\\\"\"");
        assert_eq!(line, "ts=T level=info msg=queued robot=\"a b\" x=\"q\\\"\"");
        let json = structured(LogFormat::Json, "T", "warn", "hello msg=x");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
        assert_eq!(v["msg"], "hello");
        assert_eq!(v["field_msg"], "x");
        assert_eq!(v["level"], "warn");
    }
}
