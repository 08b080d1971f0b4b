//! The Alertmanager webhook payload (version "4") and [`parse`].
//!
//! Parsing uses hand-written serde visitors rather than derived types so that every rejection
//! names the offending field ("alerts[2].labels: expected an object") and every optional field
//! gets a placeholder instead of an error. Unknown fields are skipped, as newer Alertmanager
//! versions add some. The visitors read the body in one pass straight into [`Payload`]: through
//! a `serde_json::Value` tree a 50-alert notification took some 1,500 allocations, read
//! directly about 800 (the strings `Payload` keeps), and allocation dominated the intake
//! profile (`benches/parse.rs`, BENCHMARKS.md).
//! <https://prometheus.io/docs/alerting/latest/configuration/#webhook_config>
//!
//! serde_json's recursion limit (128) stays on: we parse inside a coroutine with a fixed stack.
//!
//! This module knows nothing of WeCom or markdown.

use std::fmt;

use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

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
///
/// The body is read in one pass straight into [`Payload`]: no `serde_json::Value` tree, no
/// `String` for a field name, a timestamp or an ignored field (only the label, annotation and
/// text values that `Payload` keeps are copied out). A wrong type does not stop the pass: it is
/// kept as that field's result and the rest of the body is still read, so a body that is not
/// JSON at all is reported as such first, and of several wrong fields the same one is named as
/// when the whole tree was built first: the alerts in order, then the top-level fields, each in
/// a fixed order; of duplicate keys the last one counts.
pub fn parse(body: &[u8]) -> Result<Payload, ParseError> {
    // serde_json's message names line and column only, never the content.
    let not_json = |e: serde_json::Error| ParseError::NotJson(e.to_string());
    // One UTF-8 check of the whole body (word at a time over ASCII) instead of one per string
    // value: the body is read as `&str`. A body that is not UTF-8 is not JSON; `Skip` reads it
    // from the bytes with the same checks in the same order (it keeps nothing, and the
    // visitors below never fail on their own), so the message names the same first fault.
    let Ok(text) = std::str::from_utf8(body) else {
        let mut de = serde_json::Deserializer::from_slice(body);
        let e = Skip::deserialize(&mut de).and_then(|_| de.end());
        return Err(ParseError::NotJson(e.err().map_or_else(
            || "invalid UTF-8".to_string(), // unreachable: such bytes always fail above
            |e| e.to_string(),
        )));
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let top = de.deserialize_any(TopVisitor).map_err(not_json)?;
    de.end().map_err(not_json)?;
    top.map_err(|()| shape("body", "a JSON object"))?.finish()
}

/// A value of the wrong JSON type; the caller knows the field's name.
struct Wrong;

/// The body's top-level fields as read, each `None` when absent.
#[derive(Default)]
struct Top {
    alerts: Option<Result<Vec<Alert>, ParseError>>,
    status: Option<Result<Option<Status>, Wrong>>,
    receiver: Option<Result<Option<String>, Wrong>>,
    group_key: Option<Result<Option<String>, Wrong>>,
    group_labels: Option<Result<Pairs, BadPairs>>,
    common_labels: Option<Result<Pairs, BadPairs>>,
    common_annotations: Option<Result<Pairs, BadPairs>>,
    external_url: Option<Result<Option<String>, Wrong>>,
    truncated_alerts: Option<Result<u64, Wrong>>,
}

impl Top {
    /// Checks the fields in the order that decides which bad one is named.
    fn finish(self) -> Result<Payload, ParseError> {
        let top = Field::Top;
        let alerts = match self.alerts {
            Some(a) => a?,
            None => return Err(shape("alerts", "an array of alerts")),
        };
        let status = match self.status {
            None | Some(Ok(None)) => {
                if alerts.iter().any(|a| a.status == Status::Firing) {
                    Status::Firing
                } else {
                    Status::Resolved
                }
            }
            Some(Ok(Some(s))) => s,
            Some(Err(Wrong)) => return Err(status_error(top.at("status"))),
        };
        Ok(Payload {
            status,
            receiver: text(self.receiver, top.at("receiver"))?.unwrap_or_default(),
            group_key: text(self.group_key, top.at("groupKey"))?.unwrap_or_default(),
            group_labels: pairs(self.group_labels, top.at("groupLabels"))?,
            common_labels: pairs(self.common_labels, top.at("commonLabels"))?,
            common_annotations: pairs(self.common_annotations, top.at("commonAnnotations"))?,
            external_url: text(self.external_url, top.at("externalURL"))?.filter(|s| !s.is_empty()),
            truncated_alerts: match self.truncated_alerts {
                None => 0,
                Some(Ok(n)) => n,
                Some(Err(Wrong)) => return Err(shape("truncatedAlerts", "a whole number")),
            },
            alerts,
        })
    }
}

/// One alert's fields as read.
#[derive(Default)]
struct RawAlert {
    status: Option<Result<Option<Status>, Wrong>>,
    starts_at: Option<Result<Option<Timestamp>, Wrong>>,
    ends_at: Option<Result<Option<Timestamp>, Wrong>>,
    labels: Option<Result<Pairs, BadPairs>>,
    annotations: Option<Result<Pairs, BadPairs>>,
    generator_url: Option<Result<Option<String>, Wrong>>,
    fingerprint: Option<Result<Option<String>, Wrong>>,
}

impl RawAlert {
    fn finish(self, i: usize) -> Result<Alert, ParseError> {
        let at = Field::Alert(i);
        let status = match self.status {
            None | Some(Ok(None)) => Status::Firing,
            Some(Ok(Some(s))) => s,
            Some(Err(Wrong)) => return Err(status_error(at.at("status"))),
        };
        let time = |t: Option<Result<Option<Timestamp>, Wrong>>, name| match t {
            None => Ok(None),
            Some(Ok(t)) => Ok(t.filter(|t| !t.is_go_zero())),
            Some(Err(Wrong)) => Err(shape(at.at(name).to_string(), "a string")),
        };
        let starts_at = time(self.starts_at, "startsAt")?;
        let ends_at = time(self.ends_at, "endsAt")?;
        Ok(Alert {
            status,
            labels: pairs(self.labels, at.at("labels"))?,
            annotations: pairs(self.annotations, at.at("annotations"))?,
            starts_at,
            ends_at,
            generator_url: text(self.generator_url, at.at("generatorURL"))?
                .filter(|s| !s.is_empty()),
            fingerprint: text(self.fingerprint, at.at("fingerprint"))?.unwrap_or_default(),
        })
    }
}

fn status_error(field: FieldName) -> ParseError {
    shape(field.to_string(), "\"firing\" or \"resolved\"")
}

fn text(
    value: Option<Result<Option<String>, Wrong>>,
    field: FieldName,
) -> Result<Option<String>, ParseError> {
    match value {
        None => Ok(None),
        Some(Ok(s)) => Ok(s),
        Some(Err(Wrong)) => Err(shape(field.to_string(), "a string")),
    }
}

/// A label or annotation map that is not an object, or the first key (in name order) whose
/// value is an array or an object.
enum BadPairs {
    NotObject,
    Value(String),
}

fn pairs(value: Option<Result<Pairs, BadPairs>>, field: FieldName) -> Result<Pairs, ParseError> {
    match value {
        None => Ok(Pairs::default()),
        Some(Ok(p)) => Ok(p),
        Some(Err(BadPairs::NotObject)) => Err(shape(field.to_string(), "an object of strings")),
        Some(Err(BadPairs::Value(k))) => Err(shape(format!("{field}.{k}"), "a string")),
    }
}

/// The names of the fields we read; everything else is skipped unread.
enum Name {
    Alerts,
    Status,
    Receiver,
    GroupKey,
    GroupLabels,
    CommonLabels,
    CommonAnnotations,
    ExternalUrl,
    TruncatedAlerts,
    Labels,
    Annotations,
    StartsAt,
    EndsAt,
    GeneratorUrl,
    Fingerprint,
    Other,
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Name, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Name;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Name, E> {
                Ok(match s {
                    "alerts" => Name::Alerts,
                    "status" => Name::Status,
                    "receiver" => Name::Receiver,
                    "groupKey" => Name::GroupKey,
                    "groupLabels" => Name::GroupLabels,
                    "commonLabels" => Name::CommonLabels,
                    "commonAnnotations" => Name::CommonAnnotations,
                    "externalURL" => Name::ExternalUrl,
                    "truncatedAlerts" => Name::TruncatedAlerts,
                    "labels" => Name::Labels,
                    "annotations" => Name::Annotations,
                    "startsAt" => Name::StartsAt,
                    "endsAt" => Name::EndsAt,
                    "generatorURL" => Name::GeneratorUrl,
                    "fingerprint" => Name::Fingerprint,
                    _ => Name::Other,
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// Implements the `visit_*` methods of a [`Visitor`] whose `Value` is `Result<_, $wrong>` for
/// every JSON type not listed, answering `Err($wrong)` after reading (and so checking) the
/// value. The listed ones are written out by the caller.
macro_rules! wrong_types {
    ($wrong:expr; $($kind:ident)*) => { $( wrong_types!(@ $wrong; $kind); )* };
    (@ $wrong:expr; bool) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> { Ok(Err($wrong)) }
    };
    (@ $wrong:expr; num) => {
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> { Ok(Err($wrong)) }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> { Ok(Err($wrong)) }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> { Ok(Err($wrong)) }
    };
    (@ $wrong:expr; str) => {
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> { Ok(Err($wrong)) }
    };
    (@ $wrong:expr; null) => {
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> { Ok(Err($wrong)) }
    };
    (@ $wrong:expr; seq) => {
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<Skip>()?.is_some() {}
            Ok(Err($wrong))
        }
    };
    (@ $wrong:expr; map) => {
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            while map.next_entry::<Skip, Skip>()?.is_some() {}
            Ok(Err($wrong))
        }
    };
}

/// Reads any value and keeps nothing. Unlike serde's `IgnoredAny` it goes through the same
/// checks as a value we keep (UTF-8 in strings, numbers in range), so a body is valid JSON
/// for us exactly when serde_json would build a tree from it.
struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Skip, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Skip;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
                while seq.next_element::<Skip>()?.is_some() {}
                Ok(Skip)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
                while map.next_entry::<Skip, Skip>()?.is_some() {}
                Ok(Skip)
            }
        }
        d.deserialize_any(V)
    }
}

/// The body: an object, or `None` for any other JSON value.
struct TopVisitor;

impl<'de> Visitor<'de> for TopVisitor {
    type Value = Result<Top, ()>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an Alertmanager notification")
    }
    wrong_types!((); bool num str null seq);
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut top = Top::default();
        while let Some(key) = map.next_key::<Name>()? {
            match key {
                Name::Alerts => top.alerts = Some(map.next_value_seed(AlertsVisitor)?),
                Name::Status => top.status = Some(map.next_value_seed(StatusVisitor)?),
                Name::Receiver => top.receiver = Some(map.next_value_seed(TextVisitor)?),
                Name::GroupKey => top.group_key = Some(map.next_value_seed(TextVisitor)?),
                Name::GroupLabels => top.group_labels = Some(map.next_value_seed(PairsVisitor)?),
                Name::CommonLabels => top.common_labels = Some(map.next_value_seed(PairsVisitor)?),
                Name::CommonAnnotations => {
                    top.common_annotations = Some(map.next_value_seed(PairsVisitor)?)
                }
                Name::ExternalUrl => top.external_url = Some(map.next_value_seed(TextVisitor)?),
                Name::TruncatedAlerts => {
                    top.truncated_alerts = Some(map.next_value_seed(CountVisitor)?)
                }
                _ => {
                    map.next_value::<Skip>()?;
                }
            }
        }
        Ok(Ok(top))
    }
}

/// Lets each visitor below be passed as a seed: it reads one value of any type.
macro_rules! seed {
    ($($visitor:ident)*) => {$(
        impl<'de> DeserializeSeed<'de> for $visitor {
            type Value = <$visitor as Visitor<'de>>::Value;
            fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_any(self)
            }
        }
    )*};
}
seed!(AlertsVisitor StatusVisitor TextVisitor PairsVisitor CountVisitor TimeVisitor);

/// `alerts`: every alert in order; after the first bad one the rest is only checked as JSON.
struct AlertsVisitor;

impl<'de> Visitor<'de> for AlertsVisitor {
    type Value = Result<Vec<Alert>, ParseError>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of alerts")
    }
    wrong_types!(shape("alerts", "an array"); bool num str null map);
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut alerts = Vec::new();
        while let Some(raw) = seq.next_element_seed(AlertVisitor)? {
            let i = alerts.len();
            match raw {
                Ok(raw) => match raw.finish(i) {
                    Ok(alert) => alerts.push(alert),
                    Err(e) => return skip_rest(seq, e),
                },
                Err(Wrong) => return skip_rest(seq, shape(format!("alerts[{i}]"), "an object")),
            }
        }
        Ok(Ok(alerts))
    }
}

fn skip_rest<'de, A: SeqAccess<'de>, T>(
    mut seq: A,
    e: ParseError,
) -> Result<Result<T, ParseError>, A::Error> {
    while seq.next_element::<Skip>()?.is_some() {}
    Ok(Err(e))
}

/// One element of `alerts`.
struct AlertVisitor;

impl<'de> Visitor<'de> for AlertVisitor {
    type Value = Result<RawAlert, Wrong>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an alert")
    }
    wrong_types!(Wrong; bool num str null seq);
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut a = RawAlert::default();
        while let Some(key) = map.next_key::<Name>()? {
            match key {
                Name::Status => a.status = Some(map.next_value_seed(StatusVisitor)?),
                Name::Labels => a.labels = Some(map.next_value_seed(PairsVisitor)?),
                Name::Annotations => a.annotations = Some(map.next_value_seed(PairsVisitor)?),
                Name::StartsAt => a.starts_at = Some(map.next_value_seed(TimeVisitor)?),
                Name::EndsAt => a.ends_at = Some(map.next_value_seed(TimeVisitor)?),
                Name::GeneratorUrl => a.generator_url = Some(map.next_value_seed(TextVisitor)?),
                Name::Fingerprint => a.fingerprint = Some(map.next_value_seed(TextVisitor)?),
                _ => {
                    map.next_value::<Skip>()?;
                }
            }
        }
        Ok(Ok(a))
    }
}

impl<'de> DeserializeSeed<'de> for AlertVisitor {
    type Value = Result<RawAlert, Wrong>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

/// `status`: `"firing"`, `"resolved"` or null.
struct StatusVisitor;

impl<'de> Visitor<'de> for StatusVisitor {
    type Value = Result<Option<Status>, Wrong>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("\"firing\" or \"resolved\"")
    }
    wrong_types!(Wrong; bool num seq map);
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(match s {
            "firing" => Ok(Some(Status::Firing)),
            "resolved" => Ok(Some(Status::Resolved)),
            _ => Err(Wrong),
        })
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Ok(None))
    }
}

/// A text field we keep: a string or null.
struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Result<Option<String>, Wrong>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }
    wrong_types!(Wrong; bool num seq map);
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Ok(Some(s.to_owned())))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Ok(None))
    }
}

/// `startsAt`/`endsAt`: parsed where they lie in the body, never copied. A string that is not
/// RFC 3339 counts as missing.
struct TimeVisitor;

impl<'de> Visitor<'de> for TimeVisitor {
    type Value = Result<Option<Timestamp>, Wrong>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a time")
    }
    wrong_types!(Wrong; bool num seq map);
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Ok(parse_rfc3339(s)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Ok(None))
    }
}

/// `truncatedAlerts`: a whole number or null.
struct CountVisitor;

impl<'de> Visitor<'de> for CountVisitor {
    type Value = Result<u64, Wrong>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a whole number")
    }
    wrong_types!(Wrong; bool str seq map);
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
        Ok(Ok(n))
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
        Ok(u64::try_from(n).map_err(|_| Wrong))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Err(Wrong))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Ok(0))
    }
}

/// Label and annotation maps. Alertmanager always sends strings; numbers and booleans from
/// hand-written senders are shown as written rather than rejected.
struct PairsVisitor;

impl<'de> Visitor<'de> for PairsVisitor {
    type Value = Result<Pairs, BadPairs>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object of strings")
    }
    wrong_types!(BadPairs::NotObject; bool num str seq);
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Ok(Pairs::default()))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        // `None` marks a value of the wrong type; a duplicate name's last value counts.
        let mut out: Vec<(String, Option<String>)> = Vec::new();
        while let Some(k) = map.next_key::<String>()? {
            let v = map.next_value_seed(PairValue)?;
            out.push((k, v));
        }
        // Stable: of equal names the later stays later, and is the one kept.
        out.sort_by(|(a, _), (b, _)| a.cmp(b));
        out.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                std::mem::swap(later, kept);
            }
            same
        });
        if let Some((k, _)) = out.iter().find(|(_, v)| v.is_none()) {
            return Ok(Err(BadPairs::Value(k.clone())));
        }
        let mut out: Vec<(String, String)> =
            out.into_iter().map(|(k, v)| (k, v.unwrap_or_default())).collect();
        if let Some(i) = out.iter().position(|(k, _)| k == "alertname") {
            out[..=i].rotate_right(1);
        }
        Ok(Ok(Pairs(out)))
    }
}

/// One label or annotation value as text, `None` for an array or an object.
struct PairValue;

impl<'de> DeserializeSeed<'de> for PairValue {
    type Value = Option<String>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for PairValue {
    type Value = Option<String>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Some(s.to_owned()))
    }
    fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
        Ok(Some(s))
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
        Ok(Some(n.to_string()))
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
        Ok(Some(n.to_string()))
    }
    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Self::Value, E> {
        // As serde_json's own `Number` prints it.
        Ok(Some(serde_json::Number::from_f64(n).map(|n| n.to_string()).unwrap_or_default()))
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Self::Value, E> {
        Ok(Some(b.to_string()))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Some(String::new()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(None)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<Skip, Skip>()?.is_some() {}
        Ok(None)
    }
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

impl Timestamp {
    /// Go's zero `time.Time`, which Alertmanager sends as `endsAt` of firing alerts.
    fn is_go_zero(&self) -> bool {
        self.unix_seconds <= -62_135_596_800
    }
}

/// A firing notification of `group_key` holding `alerts`, every other field empty: the shape the
/// unit tests of compact, digest, split and the outbox build theirs from (`..` for the rest).
#[cfg(test)]
impl Payload {
    pub fn for_test(group_key: &str, alerts: Vec<Alert>) -> Payload {
        Payload {
            status: Status::Firing,
            receiver: "r".into(),
            group_key: group_key.into(),
            group_labels: Pairs::default(),
            common_labels: Pairs::default(),
            common_annotations: Pairs::default(),
            external_url: None,
            truncated_alerts: 0,
            alerts,
        }
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

    /// The 1.0 parser, built on a `serde_json::Value` tree: the oracle that the one-pass parser
    /// must agree with, on every payload and on every error message, word for word.
    mod reference {
        use super::super::*;
        use serde_json::{Map, Value};

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
                common_annotations: pairs(
                    obj.remove("commonAnnotations"),
                    top.at("commonAnnotations"),
                )?,
                external_url: opt_string(&mut obj, top.at("externalURL"))?
                    .filter(|s| !s.is_empty()),
                truncated_alerts: match obj.get("truncatedAlerts") {
                    None | Some(Value::Null) => 0,
                    Some(v) => {
                        v.as_u64().ok_or_else(|| shape("truncatedAlerts", "a whole number"))?
                    }
                },
                alerts,
            })
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
                generator_url: opt_string(&mut obj, at.at("generatorURL"))?
                    .filter(|s| !s.is_empty()),
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
    }

    fn same_as_reference(body: &[u8]) {
        assert_eq!(parse(body), reference::parse(body), "body: {}", String::from_utf8_lossy(body));
    }

    /// Every field, at the top and in an alert, set to every JSON type in turn, alone and
    /// with a second bad field; every prefix of a body (syntax errors, line and column);
    /// duplicate keys; a bad field followed by broken JSON.
    #[test]
    fn agrees_with_the_value_tree_parser() {
        use serde_json::{json, Value};
        let base = json!({
            "version": "4", "status": "firing", "receiver": "r", "groupKey": "{}:{a=\"1\"}",
            "groupLabels": {"alertname": "A"}, "commonLabels": {"alertname": "A", "z": "1"},
            "commonAnnotations": {"summary": "s"}, "externalURL": "http://am",
            "truncatedAlerts": 0,
            "alerts": [
                {"status": "firing", "labels": {"b": "2", "alertname": "A", "a": "1"},
                 "annotations": {"summary": "x"}, "startsAt": "2024-05-01T12:00:00Z",
                 "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://p", "fingerprint": "f1",
                 "extra": {"nested": [1, 2, {"deep": null}]}},
                {"status": "resolved", "labels": {"alertname": "B"}, "fingerprint": "f2"}
            ]
        });
        let values = [
            json!(null),
            json!(true),
            json!(0),
            json!(7),
            json!(-3),
            json!(1.5),
            json!(-0.0),
            json!(""),
            json!("firing"),
            json!("resolved"),
            json!("2024-05-01T20:00:00+08:00"),
            json!([]),
            json!([1, "x"]),
            json!({}),
            json!({"k": "v", "n": 1, "b": false, "z": null}),
            json!({"alertname": 3, "a": [1]}),
            json!({"m": {"x": 1}, "a": "1"}),
            json!(18446744073709551615u64),
            json!(1e300),
        ];
        let top = [
            "status",
            "receiver",
            "groupKey",
            "groupLabels",
            "commonLabels",
            "commonAnnotations",
            "externalURL",
            "truncatedAlerts",
            "alerts",
            "unknown",
        ];
        let alert = [
            "status",
            "labels",
            "annotations",
            "startsAt",
            "endsAt",
            "generatorURL",
            "fingerprint",
            "unknown",
        ];
        let mut bodies: Vec<Value> = vec![base.clone(), json!([]), json!("x"), json!(null)];
        for v in &values {
            for f in top {
                let mut b = base.clone();
                b[f] = v.clone();
                bodies.push(b.clone());
                if f != "alerts" {
                    b["alerts"][1]["labels"] = json!([]);
                    bodies.push(b);
                }
                if let Some(obj) = base.as_object() {
                    let mut without = obj.clone();
                    without.remove(f);
                    bodies.push(Value::Object(without));
                }
            }
            for f in alert {
                for i in 0..2 {
                    let mut b = base.clone();
                    b["alerts"][i][f] = v.clone();
                    bodies.push(b.clone());
                    b["receiver"] = json!(1);
                    bodies.push(b);
                }
            }
            let mut b = base.clone();
            b["alerts"][1] = v.clone();
            bodies.push(b);
        }
        let mut checked = 0;
        for b in &bodies {
            let text = b.to_string();
            same_as_reference(text.as_bytes());
            let pretty = serde_json::to_string_pretty(b).unwrap_or_default();
            same_as_reference(pretty.as_bytes());
            checked += 2;
        }
        let text = base.to_string();
        for end in 0..text.len() {
            same_as_reference(&text.as_bytes()[..end]);
            checked += 1;
        }
        let raw: &[&[u8]] = &[
            br#"{"alerts":[],"alerts":[{"labels":{"a":"1","a":"2","alertname":"x"}}]}"#,
            br#"{"alerts":[{"labels":{"a":[],"a":"ok"}}]}"#,
            br#"{"alerts":[{"labels":{"a":"ok","a":{}}}]}"#,
            br#"{"alerts":[{"labels":{"b":[],"a":{}}}]}"#,
            br#"{"alerts":1,"alerts":[]}"#,
            br#"{"alerts":[1],"receiver":2"#,
            br#"{"alerts":[{"status":"bad"}],"x":"\ud800"}"#,
            br#"{"alerts":[{"status":"bad"}],"x":1e400}"#,
            br#"{"alerts":[{"status":"bad"}]} trailing"#,
            br#"{"alerts":[{"labels":{"k\u00e9y":"v\n"}}],"receiver":"\u4e2d"}"#,
            b"{\"alerts\":[],\"receiver\":\"\xff\"}",
            b"{\"alerts\":[],\"unknown\":\"\xff\"}",
            b"{\"alerts\":[{\"labels\":{\"a\":1.0,\"b\":1e2,\"c\":-0}}]}",
        ];
        for b in raw {
            same_as_reference(b);
            checked += 1;
        }
        assert!(checked > 1000, "{checked} bodies");
    }

    #[test]
    fn deep_nesting_is_rejected_not_overflowed() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(parse(deep.as_bytes()), Err(ParseError::NotJson(_))));
    }
}
