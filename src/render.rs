//! `&Payload` → a WeCom markdown [`Document`]: sections, one block per alert, fixed time zone.
//!
//! The layout keeps the fields people know from the old tool (告警项目, 告警名称, 告警主题,
//! 告警级别, 告警时间, 故障实例/名称空间, 恢复时间, 告警详情), but renders one document per
//! notification with firing and resolved alerts in separate sections. Each alert is a
//! self-contained block so `outbox::split` can cut a long document at alert boundaries.
//!
//! Invariant: text that comes from labels and annotations goes through [`escape`], so it can
//! neither break the layout (newlines, quotes) nor inject `<font>` or `<@user>` markup.
//! WeCom markdown reference: <https://developer.work.weixin.qq.com/document/path/91770#markdown类型>
//!
//! Pure: no I/O, no clock, no HTTP.

use std::fmt::Write;

use crate::alertmanager::{Alert, Payload, Status};
use crate::time::{format_time, TzOffset};
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
    let footer = (payload.truncated_alerts > 0).then(|| {
        format!(
            "> <font color=\"comment\">另有 {} 条告警被 Alertmanager 截断未列出</font>",
            payload.truncated_alerts
        )
    });
    Document { sections, footer }
}

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
    line("告警时间", alert.starts_at.map_or_else(|| "-".to_string(), |t| format_time(t, tz)));
    if let Some(instance) = label("instance") {
        line("故障实例", escape(instance));
    } else if let Some(namespace) = label("namespace") {
        line("名称空间", escape(namespace));
    }
    if alert.status == Status::Resolved {
        line("恢复时间", alert.ends_at.map_or_else(|| "-".to_string(), |t| format_time(t, tz)));
    }
    let detail = annotation("description").or_else(|| annotation("message")).unwrap_or("");
    line("告警详情", or_dash(&escape(detail)));
    if let Some(url) = alert.generator_url.as_deref().and_then(safe_url) {
        let _ = write!(out, "\n> [查看详情]({url})");
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
            match (line.find("]("), line.starts_with('[') && line.ends_with(')')) {
                (Some(mid), true) => {
                    format!("{}: {}", &line[1..mid], &line[mid + 2..line.len() - 1])
                }
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
