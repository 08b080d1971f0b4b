//! `&Payload` → a WeCom markdown [`Document`]: sections, one block per alert, fixed time zone.
//!
//! The layout keeps the fields people know from the old tool (告警项目, 告警名称, 告警主题,
//! 告警级别, 告警时间, 故障实例, 名称空间, 恢复时间, 告警详情), adds what an on-call engineer
//! acts on (Pod, 容器, 节点, 采集任务, 持续时间, links to silence the alert and to its runbook),
//! and renders one document per notification with firing and resolved alerts in separate
//! sections. Each alert is a self-contained block so `outbox::split` can cut a long document at
//! alert boundaries.
//!
//! Invariant: text that comes from labels and annotations goes through [`escape`], so it can
//! neither break the layout (newlines, quotes) nor inject `<font>` or `<@user>` markup.
//! WeCom markdown reference: <https://developer.work.weixin.qq.com/document/path/91770#markdown类型>
//!
//! Pure: no I/O, no clock, no HTTP.

use std::fmt::Write;

use crate::alertmanager::{Alert, Payload, Status};
use crate::time::{format_time, Timestamp, TzOffset};
use crate::wecom::MsgType;

/// A rendered notification, before splitting into messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Document {
    pub sections: Vec<Section>,
    /// Shown once, after the last alert (e.g. the count of alerts Alertmanager truncated).
    pub footer: Option<String>,
}

/// Alerts of one status under a coloured heading.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Section {
    pub heading: String,
    pub alerts: Vec<String>,
}

impl Document {
    /// The whole document as one markdown text (may exceed WeCom's limit; see `outbox::split`).
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        for section in &self.sections {
            push_block(&mut out, &section.heading);
            for alert in &section.alerts {
                push_block(&mut out, alert);
            }
        }
        if let Some(footer) = &self.footer {
            push_block(&mut out, footer);
        }
        out
    }
}

/// Appends a block, separated from the previous one by a blank line.
pub fn push_block(out: &mut String, block: &str) {
    if !out.is_empty() {
        out.push_str("\n\n");
    }
    out.push_str(block);
}

pub fn render(payload: &Payload, tz: TzOffset) -> Document {
    let mut sections = Vec::new();
    for status in [Status::Firing, Status::Resolved] {
        let alerts: Vec<String> = payload
            .alerts
            .iter()
            .filter(|a| a.status == status)
            .map(|a| render_alert(a, payload, tz))
            .collect();
        if alerts.is_empty() {
            continue;
        }
        let (title, colour) = match status {
            Status::Firing => ("告警通知", "warning"),
            Status::Resolved => ("恢复通知", "info"),
        };
        sections.push(Section {
            heading: format!("## <font color=\"{colour}\">{title}</font> 共 {} 条", alerts.len()),
            alerts,
        });
    }
    if sections.is_empty() {
        // A notification without alerts still says something rather than sending nothing.
        let (title, colour) = match payload.status {
            Status::Firing => ("告警通知", "warning"),
            Status::Resolved => ("恢复通知", "info"),
        };
        sections.push(Section {
            heading: format!("## <font color=\"{colour}\">{title}</font> 共 0 条"),
            alerts: vec![format!("> 告警分组: {}", or_dash(&escape(&payload.group_key)))],
        });
    }
    Document { sections, footer: truncated_footer(payload) }
}

/// The last line when Alertmanager truncated the group (`truncatedAlerts`), for the built-in
/// layout and templates alike.
pub fn truncated_footer(payload: &Payload) -> Option<String> {
    (payload.truncated_alerts > 0).then(|| {
        format!(
            "> <font color=\"comment\">另有 {} 条告警被 Alertmanager 截断未列出</font>",
            payload.truncated_alerts
        )
    })
}

/// The display offset most groups expect; any other `--tz` is written next to each time.
const DEFAULT_TZ_SECONDS: i32 = 8 * 3600;

/// Labels that locate the problem, shown (when present) after 故障实例 in this order. The old
/// tool showed 名称空间 only when `instance` was missing; on Kubernetes `instance` is usually the
/// exporter's scrape address, so the workload labels are what the reader needs.
const PLACE_LABELS: [(&str, &str); 5] = [
    ("namespace", "名称空间"),
    ("pod", "Pod"),
    ("container", "容器"),
    ("node", "节点"),
    ("job", "采集任务"),
];

fn render_alert(alert: &Alert, payload: &Payload, tz: TzOffset) -> String {
    // A field missing on the alert falls back to the group's common value, then to "-".
    let label = |name: &str| alert.labels.get(name).or_else(|| payload.common_labels.get(name));
    let annotation =
        |name: &str| alert.annotations.get(name).or_else(|| payload.common_annotations.get(name));
    let colour = match alert.status {
        Status::Firing => "warning",
        Status::Resolved => "info",
    };
    let mut out = String::new();
    let name = or_dash(&escape(label("alertname").unwrap_or("")));
    let _ = write!(out, "**告警名称**: <font color=\"{colour}\">{name}</font>");
    let mut line = |key: &str, value: String| {
        let _ = write!(out, "\n> {key}: {value}");
    };
    line("告警项目", or_dash(&escape(label("project").unwrap_or(""))));
    line("告警主题", or_dash(&escape(annotation("summary").unwrap_or(""))));
    let severity = or_dash(&escape(label("severity").unwrap_or("")));
    line("告警级别", format!("<font color=\"{colour}\">{severity}</font>"));
    line("告警时间", alert.starts_at.map_or_else(|| "-".to_string(), |t| show_time(t, tz)));
    if let Some(instance) = label("instance") {
        line("故障实例", escape(instance));
    }
    for (name, title) in PLACE_LABELS {
        if let Some(value) = label(name) {
            line(title, escape(value));
        }
    }
    if alert.status == Status::Resolved {
        line("恢复时间", alert.ends_at.map_or_else(|| "-".to_string(), |t| show_time(t, tz)));
        if let Some(lasted) = duration(alert) {
            line("持续时间", lasted);
        }
    }
    let detail = annotation("description").or_else(|| annotation("message")).unwrap_or("");
    line("告警详情", or_dash(&escape(detail)));
    let mut links = Vec::new();
    if let Some(url) = alert.generator_url.as_deref().and_then(safe_url) {
        links.push(format!("[查看详情]({url})"));
    }
    if alert.status == Status::Firing {
        if let Some(url) = silence_url(alert, payload) {
            links.push(format!("[静默此告警]({url})"));
        }
    }
    if let Some(url) = annotation("runbook_url").and_then(safe_url) {
        links.push(format!("[处理手册]({url})"));
    }
    if !links.is_empty() {
        let _ = write!(out, "\n> {}", links.join(LINK_SEPARATOR));
    }
    out
}

/// Between the links of one line; `text` turns each link into a line of its own.
const LINK_SEPARATOR: &str = " · ";

/// A time in the display offset, with the offset written out when it is not the usual +08:00,
/// so a group spread over time zones reads it right.
pub fn show_time(t: Timestamp, tz: TzOffset) -> String {
    if tz.seconds == DEFAULT_TZ_SECONDS {
        format_time(t, tz)
    } else {
        format!("{} (UTC{tz})", format_time(t, tz))
    }
}

/// How long a resolved alert lasted (`endsAt - startsAt`), as `1小时5分`; `None` for a firing
/// alert (rendering has no clock), a missing time, or an end before the start.
pub fn duration(alert: &Alert) -> Option<String> {
    if alert.status != Status::Resolved {
        return None;
    }
    let (start, end) = (alert.starts_at?, alert.ends_at?);
    let secs = end.unix_seconds.checked_sub(start.unix_seconds)?;
    (secs >= 0).then(|| format_duration(secs.unsigned_abs()))
}

/// `45秒`, `5分30秒`, `1小时5分`, `2天3小时`: seconds only under an hour, zero parts left out.
pub fn format_duration(secs: u64) -> String {
    let (days, hours, minutes, seconds) =
        (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    let mut out = String::new();
    for (n, unit) in [(days, "天"), (hours, "小时"), (minutes, "分")] {
        if n > 0 {
            let _ = write!(out, "{n}{unit}");
        }
    }
    if secs < 3600 && (seconds > 0 || out.is_empty()) {
        let _ = write!(out, "{seconds}秒");
    }
    out
}

/// Alertmanager's "new silence" page with this alert's labels as the filter:
/// `externalURL/#/silences/new?filter={a="1",b="2"}`, percent-encoded. `None` without an
/// http(s) `externalURL` or without labels.
pub fn silence_url(alert: &Alert, payload: &Payload) -> Option<String> {
    let base = payload.external_url.as_deref().and_then(safe_url)?;
    if alert.labels.0.is_empty() {
        return None;
    }
    let mut filter = String::from("{");
    for (i, (name, value)) in alert.labels.0.iter().enumerate() {
        if i > 0 {
            filter.push(',');
        }
        let value = value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
        let _ = write!(filter, "{name}=\"{value}\"");
    }
    filter.push('}');
    Some(format!(
        "{}/#/silences/new?filter={}",
        base.trim_end_matches('/'),
        percent_encode(&filter)
    ))
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The document in another message type's syntax: `markdown_v2` has no `<font color>`;
/// `text` has no markup at all (headings, bold, quotes and links become plain text). Only our
/// own markup is touched: label text was escaped and holds none.
pub fn adapt(doc: Document, msgtype: MsgType) -> Document {
    let convert: fn(&str) -> String = match msgtype {
        MsgType::Markdown => return doc,
        MsgType::MarkdownV2 => strip_font,
        MsgType::Text => plain_text,
    };
    Document {
        sections: doc
            .sections
            .into_iter()
            .map(|s| Section {
                heading: convert(&s.heading),
                alerts: s.alerts.iter().map(|a| convert(a)).collect(),
            })
            .collect(),
        footer: doc.footer.as_deref().map(convert),
    }
}

fn strip_font(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("<font color=\"") {
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        match rest.find('>') {
            Some(end) => rest = &rest[end + 1..],
            None => break,
        }
    }
    out.push_str(rest);
    out.replace("</font>", "")
}

fn plain_text(s: &str) -> String {
    strip_font(s)
        .lines()
        .map(|line| {
            let line = line.strip_prefix("## ").or_else(|| line.strip_prefix("> ")).unwrap_or(line);
            let line = line.replace("**", "");
            match line.strip_prefix('[').and_then(|l| l.strip_suffix(')')) {
                // A line of links, `[a](u) · [b](v)`, becomes `a: u` and `b: v` on lines of
                // their own.
                Some(inner) if inner.contains("](") => inner
                    .split(&format!("){LINK_SEPARATOR}["))
                    .map(|link| match link.split_once("](") {
                        Some((text, url)) => format!("{text}: {url}"),
                        None => link.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join("\n"),
                _ => line,
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_string()
    } else {
        s.to_string()
    }
}

/// Makes label text inert: markup characters become their full-width look-alikes (WeCom has no
/// reliable backslash escaping), line breaks and tabs become spaces, control characters go.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut last_space = false;
    for c in s.trim().chars() {
        let mapped = match c {
            '<' => '＜',
            '>' => '＞',
            '*' => '＊',
            '`' => '｀',
            '[' => '［',
            ']' => '］',
            '\r' | '\n' | '\t' => ' ',
            c if c.is_control() => continue,
            c => c,
        };
        if mapped == ' ' {
            if last_space {
                continue;
            }
            last_space = true;
        } else {
            last_space = false;
        }
        out.push(mapped);
    }
    out
}

/// An http(s) URL made safe inside `[text](url)`: characters that would end the link or open
/// markup are percent-encoded. Anything else (javascript:, garbage) is dropped.
pub fn safe_url(url: &str) -> Option<String> {
    let url = url.trim();
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return None;
    }
    let mut out = String::with_capacity(url.len());
    for c in url.chars() {
        match c {
            ' ' => out.push_str("%20"),
            '(' => out.push_str("%28"),
            ')' => out.push_str("%29"),
            '<' => out.push_str("%3C"),
            '>' => out.push_str("%3E"),
            '"' => out.push_str("%22"),
            '[' => out.push_str("%5B"),
            ']' => out.push_str("%5D"),
            '`' => out.push_str("%60"),
            '*' => out.push_str("%2A"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alertmanager::parse;
    use crate::outbox::split::split;
    use crate::time::parse_rfc3339;
    use crate::wecom::MARKDOWN_MAX_BYTES;
    use std::path::Path;

    const CST: TzOffset = TzOffset { seconds: 8 * 3600 };

    #[test]
    fn escape_neutralises_markup() {
        assert_eq!(
            escape("<font color=\"info\">x</font> <@all> **b** `c` [l](u)\n> q"),
            "＜font color=\"info\"＞x＜/font＞ ＜@all＞ ＊＊b＊＊ ｀c｀ ［l］(u) ＞ q"
        );
        assert_eq!(escape("  a\r\n\r\n b\u{7}c  "), "a bc");
    }

    #[test]
    fn adapts_to_markdown_v2_and_text() -> Result<(), String> {
        let body =
            std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/firing.json"))
                .map_err(|e| e.to_string())?;
        let doc = render(&parse(&body).map_err(|e| e.to_string())?, CST);
        let v2 = adapt(doc.clone(), MsgType::MarkdownV2).to_markdown();
        assert!(!v2.contains("<font") && !v2.contains("</font>"), "{v2}");
        assert!(
            v2.starts_with("## 告警通知 共 1 条") && v2.contains("**告警名称**: InstanceDown"),
            "{v2}"
        );
        let text = adapt(doc, MsgType::Text).to_markdown();
        assert!(
            text.starts_with("告警通知 共 1 条\n\n告警名称: InstanceDown\n告警项目: ops"),
            "{text}"
        );
        assert!(text.contains("\n查看详情: http://prometheus:9090/graph?"), "{text}");
        assert!(!text.contains("**") && !text.contains("> ") && !text.contains("<font"), "{text}");
        Ok(())
    }

    #[test]
    fn durations_read_like_people_say_them() {
        for (secs, want) in [
            (0, "0秒"),
            (45, "45秒"),
            (300, "5分"),
            (330, "5分30秒"),
            (3600, "1小时"),
            (3900, "1小时5分"),
            (3959, "1小时5分"),
            (86_400 * 2 + 3 * 3600, "2天3小时"),
            (86_400 + 61, "1天1分"),
        ] {
            assert_eq!(format_duration(secs), want, "{secs}");
        }
    }

    #[test]
    fn offset_is_shown_unless_it_is_the_usual_one() -> Result<(), String> {
        let t = parse_rfc3339("2024-05-01T12:00:00Z").ok_or("time")?;
        assert_eq!(show_time(t, CST), "2024-05-01 20:00:00");
        assert_eq!(show_time(t, TzOffset { seconds: 0 }), "2024-05-01 12:00:00 (UTC+00:00)");
        assert_eq!(
            show_time(t, TzOffset { seconds: -(5 * 3600 + 1800) }),
            "2024-05-01 06:30:00 (UTC-05:30)"
        );
        Ok(())
    }

    #[test]
    fn silence_link_carries_every_label_encoded() -> Result<(), String> {
        let p = parse(
            br#"{"externalURL":"http://am:9093/","alerts":[{"labels":{"alertname":"A","x":"say \"hi\" & <b>"}}]}"#,
        )
        .map_err(|e| e.to_string())?;
        assert_eq!(
            silence_url(&p.alerts[0], &p).as_deref(),
            Some("http://am:9093/#/silences/new?filter=%7Balertname%3D%22A%22%2Cx%3D%22say%20%5C%22hi%5C%22%20%26%20%3Cb%3E%22%7D")
        );
        // No http(s) externalURL, no link.
        for bad in ["", "javascript:alert(1)", "am:9093"] {
            let body = format!(r#"{{"externalURL":"{bad}","alerts":[{{"labels":{{"a":"1"}}}}]}}"#);
            let p = parse(body.as_bytes()).map_err(|e| e.to_string())?;
            assert_eq!(silence_url(&p.alerts[0], &p), None, "{bad}");
        }
        Ok(())
    }

    #[test]
    fn text_puts_each_link_on_its_own_line() {
        assert_eq!(
            plain_text(
                "> [查看详情](http://p/g) · [静默此告警](http://a/#/s) · [处理手册](https://r)"
            ),
            "查看详情: http://p/g\n静默此告警: http://a/#/s\n处理手册: https://r"
        );
    }

    #[test]
    fn times_in_display_offset() {
        let t = |s| parse_rfc3339(s).map(|t| format_time(t, CST));
        assert_eq!(t("2024-05-01T12:00:00Z").as_deref(), Some("2024-05-01 20:00:00"));
        assert_eq!(t("2024-05-01T20:00:00.999+08:00").as_deref(), Some("2024-05-01 20:00:00"));
        assert_eq!(t("2024-12-31T23:30:00-01:00").as_deref(), Some("2025-01-01 08:30:00"));
        let utc =
            parse_rfc3339("1969-12-31T23:59:59Z").map(|t| format_time(t, TzOffset { seconds: 0 }));
        assert_eq!(utc.as_deref(), Some("1969-12-31 23:59:59"));
    }

    #[test]
    fn unsafe_urls_are_dropped_or_encoded() {
        assert_eq!(safe_url("javascript:alert(1)"), None);
        assert_eq!(
            safe_url("http://p:9090/graph?g0.expr=rate(x[5m]) > 1").as_deref(),
            Some("http://p:9090/graph?g0.expr=rate%28x%5B5m%5D%29%20%3E%201")
        );
    }

    /// Golden files: `tests/golden/<case>.json` rendered with +08:00 and split at WeCom's limit
    /// must equal `<case>.md`. `UPDATE_GOLDEN=1 cargo test golden` rewrites them; review the diff.
    #[test]
    fn golden() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
        let mut cases: Vec<_> = std::fs::read_dir(&dir)
            .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        cases.retain(|p| p.extension().is_some_and(|e| e == "json"));
        cases.sort();
        assert!(cases.len() >= 8, "golden cases missing in {}", dir.display());
        let update = std::env::var_os("UPDATE_GOLDEN").is_some();
        let mut failures = Vec::new();
        for case in cases {
            let body = std::fs::read(&case).unwrap_or_default();
            let payload = match parse(&body) {
                Ok(p) => p,
                Err(e) => panic!("{}: {e}", case.display()),
            };
            let parts = split(&render(&payload, CST), MARKDOWN_MAX_BYTES);
            let got = parts.join("\n\n----- next message -----\n\n") + "\n";
            let md = case.with_extension("md");
            if update {
                let _ = std::fs::write(&md, &got);
                continue;
            }
            let want = std::fs::read_to_string(&md).unwrap_or_default();
            if got != want {
                failures.push(format!("{}:\n--- want\n{want}\n--- got\n{got}", md.display()));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}
