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

/// A point in time as seconds and nanoseconds since the Unix epoch (UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    pub unix_seconds: i64,
    pub nanos: u32,
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

/// Parses RFC 3339 (`2024-05-01T12:00:00.123456789+08:00`, `…Z`). Lenient on a space instead
/// of `T` and on lower-case letters; returns `None` for anything else.
pub fn parse_rfc3339(s: &str) -> Option<Timestamp> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(range)?;
        if part.iter().all(u8::is_ascii_digit) {
            Some(part.iter().fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0')))
        } else {
            None
        }
    };
    if b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut pos = 19;
    let mut nanos: u32 = 0;
    if b.get(pos) == Some(&b'.') {
        pos += 1;
        let start = pos;
        while pos < b.len() && b[pos].is_ascii_digit() {
            if pos - start < 9 {
                nanos = nanos * 10 + u32::from(b[pos] - b'0');
            }
            pos += 1;
        }
        let digits = pos - start;
        if digits == 0 {
            return None;
        }
        for _ in digits..9 {
            nanos *= 10;
        }
    }
    let offset_seconds = match b.get(pos)? {
        b'Z' | b'z' if pos + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if pos + 6 == b.len() && b[pos + 3] == b':' => {
            let (oh, om) = (num(pos + 1..pos + 3)?, num(pos + 4..pos + 6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let off = oh * 3600 + om * 60;
            if *sign == b'-' {
                -off
            } else {
                off
            }
        }
        _ => return None,
    };
    // A leap second (:60) is shown as the following second.
    let local = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    Some(Timestamp { unix_seconds: local - offset_seconds, nanos })
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 for a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`]: (year, month, day).
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Option<i64> {
        parse_rfc3339(s).map(|t| t.unix_seconds)
    }

    #[test]
    fn rfc3339_offsets_and_fractions() {
        assert_eq!(ts("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(ts("2024-05-01T12:00:00Z"), Some(1_714_564_800));
        assert_eq!(ts("2024-05-01T20:00:00+08:00"), Some(1_714_564_800));
        assert_eq!(ts("2024-05-01T06:30:00-05:30"), Some(1_714_564_800));
        let t = parse_rfc3339("2024-05-01T12:00:00.123456789123Z");
        assert_eq!(t.map(|t| t.nanos), Some(123_456_789));
        assert_eq!(
            parse_rfc3339("2024-05-01T12:00:00.5+08:00").map(|t| t.nanos),
            Some(500_000_000)
        );
        assert_eq!(ts("2024-02-29T00:00:00Z"), Some(1_709_164_800));
    }

    #[test]
    fn rfc3339_rejects_garbage() {
        for bad in [
            "",
            "2024-05-01",
            "2024-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-05-01T12:00:00",
            "2024-05-01T12:00:00+0800",
            "2024-05-01T12:00:00.Z",
            "2024-05-01T12:00:00Zjunk",
            "２０２４-05-01T12:00:00Z",
            "2024-05-01T24:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn civil_round_trip() {
        for days in [-800_000, -1, 0, 1, 19_000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

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
