//! The Alertmanager webhook payload (version "4") and [`parse`].
//!
//! Parsing goes through `serde_json::Value` and hand-written extraction rather than derived
//! types so that every rejection names the offending field ("alerts[2].labels: expected an
//! object") and every optional field gets a placeholder instead of an error. Unknown fields are
//! ignored, as newer Alertmanager versions add some.
//! <https://prometheus.io/docs/alerting/latest/configuration/#webhook_config>
//!
//! serde_json's recursion limit (128) stays on: we parse inside a coroutine with a fixed stack.
//!
//! This module knows nothing of WeCom or markdown.

use std::fmt;

use serde_json::{Map, Value};

use crate::time::{parse_rfc3339, Timestamp};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    Firing,
    Resolved,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Firing => "firing",
            Status::Resolved => "resolved",
        }
    }
}

/// Labels or annotations: sorted with `alertname` first, then by name, so output is stable.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pairs(pub Vec<(String, String)>);

impl Pairs {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alert {
    pub status: Status,
    pub labels: Pairs,
    pub annotations: Pairs,
    /// `None` when missing, unparsable or Go's zero time (`0001-01-01T00:00:00Z`).
    pub starts_at: Option<Timestamp>,
    pub ends_at: Option<Timestamp>,
    pub generator_url: Option<String>,
    pub fingerprint: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payload {
    pub status: Status,
    pub receiver: String,
    pub group_key: String,
    pub group_labels: Pairs,
    pub common_labels: Pairs,
    pub common_annotations: Pairs,
    pub external_url: Option<String>,
    pub truncated_alerts: u64,
    pub alerts: Vec<Alert>,
}

/// Why a body was rejected. Retrying will not help, so the server answers 400.
#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    NotJson(String),
    Shape { field: String, expected: &'static str },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            ParseError::NotJson(e) => write!(f, "body is not JSON: {e}"),
            ParseError::Shape { field, expected } => write!(f, "{field}: expected {expected}"),
        }
    }
}

impl std::error::Error for ParseError {}

fn shape(field: impl Into<String>, expected: &'static str) -> ParseError {
    ParseError::Shape { field: field.into(), expected }
}

/// Parses a webhook body. Never panics, whatever the bytes.
pub fn parse(body: &[u8]) -> Result<Payload, ParseError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        // serde_json's message names line and column only, never the content.
        ParseError::NotJson(e.to_string())
    })?;
    // Values are taken apart by move, not cloned: a 50-alert notification is a few thousand
    // strings, and allocation dominated the intake profile.
    let Value::Object(mut obj) = value else {
        return Err(shape("body", "a JSON object"));
    };
    let alerts_array = match obj.remove("alerts") {
        Some(Value::Array(items)) => items,
        Some(_) => return Err(shape("alerts", "an array")),
        None => return Err(shape("alerts", "an array of alerts")),
    };
    let mut alerts = Vec::with_capacity(alerts_array.len());
    for (i, a) in alerts_array.into_iter().enumerate() {
        alerts.push(parse_alert(a, i)?);
    }
    let top = Field::Top;
    let status = match obj.remove("status") {
        None | Some(Value::Null) => {
            if alerts.iter().any(|a| a.status == Status::Firing) {
                Status::Firing
            } else {
                Status::Resolved
            }
        }
        Some(v) => parse_status(&v, top.at("status"))?,
    };
    Ok(Payload {
        status,
        receiver: opt_string(&mut obj, top.at("receiver"))?.unwrap_or_default(),
        group_key: opt_string(&mut obj, top.at("groupKey"))?.unwrap_or_default(),
        group_labels: pairs(obj.remove("groupLabels"), top.at("groupLabels"))?,
        common_labels: pairs(obj.remove("commonLabels"), top.at("commonLabels"))?,
        common_annotations: pairs(obj.remove("commonAnnotations"), top.at("commonAnnotations"))?,
        external_url: opt_string(&mut obj, top.at("externalURL"))?.filter(|s| !s.is_empty()),
        truncated_alerts: match obj.get("truncatedAlerts") {
            None | Some(Value::Null) => 0,
            Some(v) => v.as_u64().ok_or_else(|| shape("truncatedAlerts", "a whole number"))?,
        },
        alerts,
    })
}

/// Where a value sits, for error messages; formatted only when an error needs it.
#[derive(Clone, Copy)]
enum Field {
    Top,
    Alert(usize),
}

/// A field name within a [`Field`].
#[derive(Clone, Copy)]
struct FieldName {
    within: Field,
    name: &'static str,
}

impl Field {
    fn at(self, name: &'static str) -> FieldName {
        FieldName { within: self, name }
    }
}

impl fmt::Display for FieldName {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.within {
            Field::Top => write!(f, "{}", self.name),
            Field::Alert(i) => write!(f, "alerts[{i}].{}", self.name),
        }
    }
}

fn parse_alert(value: Value, i: usize) -> Result<Alert, ParseError> {
    let Value::Object(mut obj) = value else {
        return Err(shape(format!("alerts[{i}]"), "an object"));
    };
    let at = Field::Alert(i);
    let status = match obj.get("status") {
        None | Some(Value::Null) => Status::Firing,
        Some(v) => parse_status(v, at.at("status"))?,
    };
    let mut time = |name: &'static str| -> Result<Option<Timestamp>, ParseError> {
        Ok(opt_string(&mut obj, at.at(name))?
            .and_then(|s| parse_rfc3339(&s))
            .filter(|t| !t.is_go_zero()))
    };
    let starts_at = time("startsAt")?;
    let ends_at = time("endsAt")?;
    Ok(Alert {
        status,
        labels: pairs(obj.remove("labels"), at.at("labels"))?,
        annotations: pairs(obj.remove("annotations"), at.at("annotations"))?,
        starts_at,
        ends_at,
        generator_url: opt_string(&mut obj, at.at("generatorURL"))?.filter(|s| !s.is_empty()),
        fingerprint: opt_string(&mut obj, at.at("fingerprint"))?.unwrap_or_default(),
    })
}

fn parse_status(v: &Value, field: FieldName) -> Result<Status, ParseError> {
    match v.as_str() {
        Some("firing") => Ok(Status::Firing),
        Some("resolved") => Ok(Status::Resolved),
        _ => Err(shape(field.to_string(), "\"firing\" or \"resolved\"")),
    }
}

/// Takes a string field out of `obj`.
fn opt_string(
    obj: &mut Map<String, Value>,
    field: FieldName,
) -> Result<Option<String>, ParseError> {
    match obj.remove(field.name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(shape(field.to_string(), "a string")),
    }
}

/// Label and annotation maps. Alertmanager always sends strings; numbers and booleans from
/// hand-written senders are shown as written rather than rejected.
fn pairs(value: Option<Value>, field: FieldName) -> Result<Pairs, ParseError> {
    let obj = match value {
        None | Some(Value::Null) => return Ok(Pairs::default()),
        Some(Value::Object(obj)) => obj,
        Some(_) => return Err(shape(field.to_string(), "an object of strings")),
    };
    let mut out = Vec::with_capacity(obj.len());
    for (k, v) in obj {
        let text = match v {
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Null => String::new(),
            _ => return Err(shape(format!("{field}.{k}"), "a string")),
        };
        out.push((k, text));
    }
    out.sort_by(|(a, _), (b, _)| (a != "alertname", a).cmp(&(b != "alertname", b)));
    Ok(Pairs(out))
}

impl Timestamp {
    /// Go's zero `time.Time`, which Alertmanager sends as `endsAt` of firing alerts.
    fn is_go_zero(&self) -> bool {
        self.unix_seconds <= -62_135_596_800
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_zero_time_is_none() -> Result<(), ParseError> {
        let p = parse(br#"{"alerts":[{"status":"firing","endsAt":"0001-01-01T00:00:00Z","startsAt":"2024-05-01T12:00:00Z"}]}"#)?;
        assert_eq!(p.alerts[0].ends_at, None);
        assert!(p.alerts[0].starts_at.is_some());
        Ok(())
    }

    #[test]
    fn labels_sorted_alertname_first() -> Result<(), ParseError> {
        let p = parse(br#"{"status":"firing","alerts":[{"labels":{"b":"2","alertname":"X","a":"1"}}],"extra":{"new":"field"}}"#)?;
        let keys: Vec<&str> = p.alerts[0].labels.0.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["alertname", "a", "b"]);
        Ok(())
    }

    #[test]
    fn rejections_name_the_field() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "body is not JSON"),
            (b"[]", "body: expected a JSON object"),
            (b"{}", "alerts: expected an array of alerts"),
            (br#"{"alerts":{}}"#, "alerts: expected an array"),
            (br#"{"alerts":[1]}"#, "alerts[0]: expected an object"),
            (br#"{"alerts":[{"labels":[]}]}"#, "alerts[0].labels: expected an object of strings"),
            (br#"{"alerts":[{"labels":{"x":{}}}]}"#, "alerts[0].labels.x: expected a string"),
            (
                br#"{"alerts":[{"status":"weird"}]}"#,
                "alerts[0].status: expected \"firing\" or \"resolved\"",
            ),
            (br#"{"alerts":[],"truncatedAlerts":-1}"#, "truncatedAlerts: expected a whole number"),
        ];
        for (body, want) in cases {
            let got = parse(body).map(|_| ()).map_err(|e| e.to_string());
            assert!(matches!(&got, Err(e) if e.starts_with(want)), "{got:?} vs {want}");
        }
    }

    #[test]
    fn deep_nesting_is_rejected_not_overflowed() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(parse(deep.as_bytes()), Err(ParseError::NotJson(_))));
    }
}
