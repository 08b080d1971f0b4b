//! Storm mode's compact layout: many alerts of the same alertname and status as one block.
//!
//! A block names the alertname, its severity, the count, the labels and annotations every alert
//! of the block shares (once), then one short line per alert with its start time (and end time
//! when resolved) and only what differs (`instance=…`, `pod=…`, a differing summary). Fifty
//! `NodeDown` alerts take about one message instead of twelve.
//!
//! The result is a [`Document`] like the full layout's, sections per status with the same
//! headings, so `render::adapt` (message types) and `outbox::split` (size limit) apply as they
//! are. A block that would not fit one message is cut into several, each repeating its first
//! line with "(续)", so no single block ever needs cutting mid-alert.
//!
//! A template with a `[compact]` section renders each block's head itself (and each alert's
//! line with `[compact_line]`), from the same crowd: see [`crate::template`]. The blocks are
//! cut and packed the same way, so the cover of each message stays exact.
//!
//! Pure: no I/O, no clock, no HTTP.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::alertmanager::{Payload, Status};
use crate::digest::{items, severity_rank, Item};
use crate::outbox::split::cut_utf8;
use crate::render::{escape, Document, Section};
use crate::sort;
use crate::template::{Crowd, Template};
use crate::time::{format_time, Timestamp, TzOffset};

/// Longest per-alert line, in bytes; what differs beyond it is cut (the file has it all).
const LINE_MAX_BYTES: usize = 240;

/// Longest label value on a compact line or in a block's shared labels; longer ones are cut
/// with "…" (the file has them whole), so one long value cannot push the next label, or the
/// alert's host, past the line's cut.
const LABEL_VALUE_MAX_BYTES: usize = 80;

/// Longest label name shown, cut likewise.
const LABEL_NAME_MAX_BYTES: usize = 40;

/// Labels that say which alert a line is, shown first in this order (the full layout's
/// 故障实例 and its place labels, `render::PLACE_LABELS`); the rest follow by name.
const IDENTIFYING_LABELS: [&str; 7] =
    ["instance", "namespace", "pod", "container", "node", "job", "service"];

/// `s` escaped and cut to about `max` bytes, with "…" when cut.
fn cut_value(s: &str, max: usize) -> String {
    let e = escape(s);
    if e.len() <= max {
        return e;
    }
    format!("{}…", cut_utf8(&e, max.saturating_sub(3)))
}

/// `name=value` pairs, identifying labels first, each name and value cut on its own.
fn label_pairs<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> Vec<String> {
    let mut pairs: Vec<(&str, &str)> = pairs.collect();
    let rank = |k: &str| {
        IDENTIFYING_LABELS.iter().position(|n| *n == k).unwrap_or(IDENTIFYING_LABELS.len())
    };
    sort::sort_by_key(&mut pairs, |(k, _)| rank(k));
    pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                cut_value(k, LABEL_NAME_MAX_BYTES),
                cut_value(v, LABEL_VALUE_MAX_BYTES)
            )
        })
        .collect()
}

/// Longest shared annotation shown in a block's head.
const SHARED_ANNOTATION_MAX_BYTES: usize = 300;

/// Longest line a `[compact_line]` template renders (it may carry markup); cut beyond.
const TEMPLATE_LINE_MAX_BYTES: usize = 600;

/// Room a message keeps for its section heading and the "(i/n)" `split` adds.
const HEADING_ROOM_BYTES: usize = 160;

/// `MM-DD HH:MM:SS` in the display offset: the year is noise on a line that repeats it.
fn short_time(t: Option<Timestamp>, tz: TzOffset) -> String {
    match t {
        Some(t) => {
            let full = format_time(t, tz);
            full.get(5..).unwrap_or(&full).to_string()
        }
        None => "-".into(),
    }
}

/// What every alert of a crowd shares: label (or annotation) → value, when all have the same.
fn shared(
    crowd: &[Item],
    value: impl Fn(&Item, &str) -> Option<String>,
    names: &[String],
) -> Vec<(String, String)> {
    names
        .iter()
        .filter_map(|name| {
            let first = value(&crowd[0], name)?;
            crowd[1..]
                .iter()
                .all(|i| value(i, name).as_deref() == Some(first.as_str()))
                .then(|| (name.clone(), first))
        })
        .collect()
}

/// The compact layout of `groups`, blocks of at most `limit` bytes minus the heading's room;
/// in the template's `[compact]` look when it has one.
pub fn compact(
    groups: &[Payload],
    tz: TzOffset,
    limit: usize,
    template: Option<&Template>,
) -> Document {
    let sections = sections(groups, tz, limit, template)
        .into_iter()
        .map(|(heading, blocks)| Section {
            heading,
            alerts: blocks.into_iter().map(|(text, _)| text).collect(),
        })
        .collect();
    Document { sections, footer: None }
}

/// A block's text and the (group, alert) indices of the alerts it shows.
pub type Block = (String, Vec<(usize, usize)>);

/// The compact layout as sections (heading, blocks), each block with the alerts it shows, so
/// a sender can settle exactly what each message told.
pub fn sections(
    groups: &[Payload],
    tz: TzOffset,
    limit: usize,
    template: Option<&Template>,
) -> Vec<(String, Vec<Block>)> {
    let template = template.filter(|t| t.has_compact());
    let all = items(groups);
    let block_max = limit.saturating_sub(HEADING_ROOM_BYTES).max(200);
    let mut sections = Vec::new();
    for status in [Status::Firing, Status::Resolved] {
        let mut crowds: BTreeMap<&str, Vec<Item>> = BTreeMap::new();
        for item in all.iter().filter(|i| i.alert.status == status) {
            crowds.entry(item.label("alertname").unwrap_or("")).or_default().push(*item);
        }
        if crowds.is_empty() {
            continue;
        }
        let mut crowds: Vec<(&str, Vec<Item>)> = crowds.into_iter().collect();
        let rank = |c: &[Item]| {
            c.iter().map(|i| severity_rank(i.label("severity").unwrap_or(""))).min().unwrap_or(5)
        };
        sort::sort_by_key(&mut crowds, |(name, c)| (rank(c), std::cmp::Reverse(c.len()), *name));
        let count: usize = crowds.iter().map(|(_, c)| c.len()).sum();
        let (title, colour) = match status {
            Status::Firing => ("告警通知", "warning"),
            Status::Resolved => ("恢复通知", "info"),
        };
        let mut blocks = Vec::new();
        for (name, crowd) in &crowds {
            let look = Look { colour, tz, block_max, template };
            crowd_blocks(name, crowd, &look, &mut blocks);
        }
        sections
            .push((format!("## <font color=\"{colour}\">{title}</font> 共 {count} 条"), blocks));
    }
    sections
}

/// How blocks are written: colour of the status, display offset, size, template.
struct Look<'a> {
    colour: &'a str,
    tz: TzOffset,
    block_max: usize,
    template: Option<&'a Template>,
}

/// One crowd's block(s), appended to `out`.
fn crowd_blocks(name: &str, crowd: &[Item], look: &Look, out: &mut Vec<Block>) {
    let Look { colour, tz, block_max, template } = *look;
    let mut label_names: Vec<String> = crowd
        .iter()
        .flat_map(|i| i.alert.labels.0.iter().map(|(k, _)| k.clone()))
        .filter(|k| k != "alertname")
        .collect();
    sort::sort(&mut label_names);
    label_names.dedup();
    let label = |i: &Item, n: &str| i.label(n).map(str::to_string);
    let shared_labels = shared(crowd, label, &label_names);
    let annotation_names: Vec<String> =
        ["summary", "description", "message", "runbook_url"].map(String::from).to_vec();
    let annotation = |i: &Item, n: &str| i.annotation(n).map(str::to_string);
    let shared_annotations = shared(crowd, annotation, &annotation_names);
    let is_shared = |n: &str| shared_labels.iter().any(|(k, _)| k == n);

    // Raw (the template escapes what it shows); the built-in head escapes it below.
    let severity_raw = match shared_labels.iter().find(|(k, _)| k == "severity") {
        Some((_, v)) => v.clone(),
        None => {
            let mut counts: BTreeMap<(u8, String), usize> = BTreeMap::new();
            for i in crowd {
                let s = i.label("severity").unwrap_or("-");
                *counts.entry((severity_rank(s), s.to_string())).or_default() += 1;
            }
            counts.into_iter().map(|((_, s), n)| format!("{s} {n}")).collect::<Vec<_>>().join(", ")
        }
    };
    let severity = escape(&severity_raw);
    let view = Crowd {
        status: crowd[0].alert.status,
        alertname: name,
        severity: &severity_raw,
        count: crowd.len(),
        shared_labels: &shared_labels,
        shared_annotations: &shared_annotations,
    };
    let templated = template.and_then(|t| t.compact_head(&view, crowd[0].group, tz));
    let first_line = format!(
        "**告警名称**: <font color=\"{colour}\">{}</font> × {}",
        cut_utf8(&escape(if name.is_empty() { "-" } else { name }), 120),
        crowd.len()
    );
    let mut head = first_line.clone();
    let _ =
        write!(head, "\n> 告警级别: <font color=\"{colour}\">{}</font>", cut_utf8(&severity, 200));
    let common = label_pairs(
        shared_labels
            .iter()
            .filter(|(k, _)| k != "severity")
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    if !common.is_empty() {
        let what = if crowd.len() == 1 { "标签" } else { "相同标签" };
        let _ = write!(head, "\n> {what}: {}", cut_utf8(&common.join(", "), 600));
    }
    for (key, field) in
        [("summary", "告警主题"), ("description", "告警详情"), ("message", "告警详情")]
    {
        if let Some((_, v)) = shared_annotations.iter().find(|(k, _)| k == key) {
            let _ =
                write!(head, "\n> {field}: {}", cut_utf8(&escape(v), SHARED_ANNOTATION_MAX_BYTES));
        }
    }

    // A template's head: its first line repeats with "(续)" as the built-in one does.
    let (head, first_line) = match templated {
        Some(t) => {
            let t = cut_utf8(t.trim_end_matches('\n'), block_max / 2).to_string();
            let first = t.lines().next().unwrap_or("").to_string();
            (t, first)
        }
        None => (head, first_line),
    };

    let mut sorted: Vec<&Item> = crowd.iter().collect();
    sort::sort_by_key(&mut sorted, |i| i.alert.starts_at);
    let mut block = head;
    let mut shown = Vec::new();
    let mut lines_in_block = 0;
    for item in sorted {
        let differs = label_pairs(
            item.alert
                .labels
                .0
                .iter()
                .filter(|(k, v)| k != "alertname" && !v.is_empty() && !is_shared(k))
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
        let differs = differs.join(" ");
        let templated = template
            .and_then(|t| t.compact_line(&view, item.alert, item.group, &differs, tz))
            .map(|l| l.replace('\n', " "));
        let line = match templated {
            Some(l) => cut_utf8(&l, TEMPLATE_LINE_MAX_BYTES).to_string(),
            None => {
                let mut line = format!("> {}", short_time(item.alert.starts_at, tz));
                if item.alert.status == Status::Resolved {
                    let _ = write!(line, " → {}", short_time(item.alert.ends_at, tz));
                }
                if !differs.is_empty() {
                    let _ = write!(line, " {differs}");
                }
                if !shared_annotations.iter().any(|(k, _)| k == "summary") {
                    if let Some(s) = item.annotation("summary") {
                        let _ = write!(line, " · {}", escape(s));
                    }
                }
                cut_utf8(&line, LINE_MAX_BYTES).to_string()
            }
        };
        let line = line.as_str();
        if lines_in_block > 0 && block.len() + 1 + line.len() > block_max {
            let text = std::mem::replace(&mut block, format!("{first_line} (续)"));
            out.push((text, std::mem::take(&mut shown)));
            lines_in_block = 0;
        }
        block.push('\n');
        block.push_str(line);
        shown.push(item.index);
        lines_in_block += 1;
    }
    out.push((block, shown));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alertmanager::{Alert, Pairs};
    use crate::outbox::split::split;
    use crate::render::render;
    use crate::wecom::MARKDOWN_MAX_BYTES;

    const CST: TzOffset = TzOffset { seconds: 8 * 3600 };

    fn pairs(p: &[(&str, &str)]) -> Pairs {
        Pairs(p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    fn alert(name: &str, instance: &str, severity: &str, status: Status, start: i64) -> Alert {
        Alert {
            status,
            labels: pairs(&[
                ("alertname", name),
                ("cluster", "prod"),
                ("instance", instance),
                ("job", "node"),
                ("severity", severity),
            ]),
            annotations: pairs(&[
                ("summary", "Node is down"),
                ("description", &format!("{instance} unreachable")),
            ]),
            starts_at: Some(Timestamp { unix_seconds: start, nanos: 0 }),
            ends_at: (status == Status::Resolved)
                .then_some(Timestamp { unix_seconds: start + 600, nanos: 0 }),
            generator_url: None,
            fingerprint: instance.into(),
        }
    }

    fn group(alerts: Vec<Alert>) -> Payload {
        Payload::for_test("{}:{}", alerts)
    }

    /// A long label sorting before `instance` used to push it past the line's cut: each line
    /// must still name its alert, and a one-alert crowd's shared-labels line likewise.
    #[test]
    fn every_line_names_its_alert_whatever_the_other_labels() {
        let long = format!("/0/{}", "z".repeat(400));
        let alerts: Vec<Alert> = (0..5)
            .map(|i| {
                let mut a =
                    alert("DiskFull", &format!("host-{i}:9100"), "warning", Status::Firing, i);
                a.labels.0.insert(1, ("aaa_path".into(), format!("{long}{i}")));
                a.labels.0.push(("zz".into(), "tail".repeat(100)));
                a
            })
            .collect();
        let doc = compact(&[group(alerts.clone())], CST, MARKDOWN_MAX_BYTES, None);
        let text = doc.to_markdown();
        for i in 0..5 {
            let line = text
                .lines()
                .find(|l| l.contains(&format!("instance=host-{i}:9100")))
                .unwrap_or_else(|| panic!("host-{i} named on no line:\n{text}"));
            assert!(line.len() <= LINE_MAX_BYTES, "{line}");
            assert!(line.find("instance=") < line.find("aaa_path="), "identifying first: {line}");
            assert!(line.contains("z…"), "long value cut with …: {line}");
        }
        // One alert alone: its labels are all "shared", in the head's line.
        let one = compact(&[group(alerts[..1].to_vec())], CST, MARKDOWN_MAX_BYTES, None);
        let text = one.to_markdown();
        let head = text.lines().find(|l| l.contains("标签:")).unwrap_or("");
        assert!(head.contains("instance=host-0:9100"), "{text}");
    }

    #[test]
    fn a_crowd_is_one_block_with_what_differs_per_line() {
        let mut alerts: Vec<Alert> = (0..50)
            .map(|i| {
                alert(
                    "NodeDown",
                    &format!("10.0.0.{i}:9100"),
                    "critical",
                    Status::Firing,
                    1_764_640_000 + i,
                )
            })
            .collect();
        alerts.push(alert("DiskFull", "10.0.1.1:9100", "warning", Status::Firing, 1_764_640_000));
        alerts.push(alert(
            "NodeDown",
            "10.0.2.1:9100",
            "critical",
            Status::Resolved,
            1_764_630_000,
        ));
        let doc = compact(&[group(alerts.clone())], CST, MARKDOWN_MAX_BYTES, None);
        assert_eq!(doc.sections.len(), 2);
        assert!(
            doc.sections[0].heading.contains("告警通知</font> 共 51 条"),
            "{}",
            doc.sections[0].heading
        );
        let node = &doc.sections[0].alerts[0];
        assert!(
            node.starts_with("**告警名称**: <font color=\"warning\">NodeDown</font> × 50\n"),
            "{node}"
        );
        assert!(node.contains("\n> 告警级别: <font color=\"warning\">critical</font>"), "{node}");
        assert!(node.contains("\n> 相同标签: job=node, cluster=prod\n"), "{node}");
        assert!(node.contains("\n> 告警主题: Node is down"), "{node}");
        assert!(node.contains("\n> 12-02 09:46:40 instance=10.0.0.0:9100\n"), "{node}");
        assert_eq!(node.matches("instance=").count(), 50, "{node}");
        assert!(
            !node.contains("unreachable"),
            "differing descriptions are left to the file: {node}"
        );
        assert_eq!(doc.sections[0].alerts[1].lines().count(), 6, "DiskFull: head of 5 + 1 line");
        let resolved = &doc.sections[1].alerts[0];
        assert!(doc.sections[1].heading.contains("恢复通知</font> 共 1 条"));
        assert!(resolved.contains("\n> 标签: instance=10.0.2.1:9100, job=node, cluster=prod\n"));
        assert!(resolved.ends_with("\n> 12-02 07:00:00 → 12-02 07:10:00"), "{resolved}");
        // The full layout needs many more messages than compact for the same alerts.
        let full = split(&render(&group(alerts), CST), MARKDOWN_MAX_BYTES).len();
        let short = split(&doc, MARKDOWN_MAX_BYTES);
        assert!(short.len() == 1 && full >= 4, "compact {} vs full {full}", short.len());
        assert!(short[0].len() <= MARKDOWN_MAX_BYTES);
    }

    #[test]
    fn mixed_severities_and_summaries_are_named() {
        let mut a = alert("Probe", "a", "critical", Status::Firing, 0);
        let mut b = alert("Probe", "b", "warning", Status::Firing, 1);
        a.annotations.0[0].1 = "probe a failed".into();
        b.annotations.0[0].1 = "probe b slow".into();
        let doc = compact(&[group(vec![a, b])], CST, MARKDOWN_MAX_BYTES, None);
        let block = &doc.sections[0].alerts[0];
        assert!(
            block.contains("告警级别: <font color=\"warning\">critical 1, warning 1</font>"),
            "{block}"
        );
        assert!(block.contains("instance=a severity=critical · probe a failed"), "{block}");
        assert!(!block.contains("告警主题"), "{block}");
    }

    #[test]
    fn a_huge_crowd_is_cut_into_blocks_that_each_fit() {
        let alerts: Vec<Alert> = (0..2000)
            .map(|i| {
                alert(
                    "NodeDown",
                    &format!("host-{i}.example.com:9100"),
                    "critical",
                    Status::Firing,
                    i,
                )
            })
            .collect();
        let doc = compact(&[group(alerts)], CST, MARKDOWN_MAX_BYTES, None);
        let blocks = &doc.sections[0].alerts;
        assert!(blocks.len() > 10);
        assert!(
            blocks[1]
                .starts_with("**告警名称**: <font color=\"warning\">NodeDown</font> × 2000 (续)\n"),
            "{}",
            blocks[1]
        );
        let lines: usize = blocks.iter().map(|b| b.matches("instance=").count()).sum();
        assert_eq!(lines, 2000, "every alert once");
        let parts = split(&doc, MARKDOWN_MAX_BYTES);
        assert!(parts
            .iter()
            .all(|p| p.len() <= MARKDOWN_MAX_BYTES && !p.contains("内容过长已截断")));
    }

    /// A template's `[compact]` and `[compact_line]` draw the blocks; cutting, "(续)" and the
    /// alerts each block shows work as for the built-in look.
    #[test]
    fn a_template_draws_the_blocks() -> Result<(), String> {
        let t = crate::template::parse(
            "[alert]\n{{labels.alertname}}\n\
             [compact]\n### {{alertname}} · {{count}} 台 · {{severity}}\n> 共同: {{shared_labels}} · {{annotations.summary}}{{#annotations.description}} · {{annotations.description}}{{/annotations.description}}\n\
             [compact_line]\n- {{differs}} 自 {{starts_at}}{{#resolved}} 至 {{ends_at}}{{/resolved}}",
        )?;
        let alerts: Vec<Alert> = (0..300)
            .map(|i| alert("NodeDown", &format!("host-{i}:9100"), "critical", Status::Firing, i))
            .collect();
        let mut resolved = alert("NodeDown", "r1:9100", "critical", Status::Resolved, 0);
        resolved.labels.0.push(("zone".into(), "<b>".into()));
        let mut all = alerts;
        all.push(resolved);
        let sections = sections(&[group(all)], CST, MARKDOWN_MAX_BYTES, Some(&t));
        let firing = &sections[0].1;
        assert!(firing.len() > 1, "cut into blocks");
        let (first, shown) = &firing[0];
        assert!(
            first.starts_with(
                "### NodeDown · 300 台 · critical\n> 共同: cluster=prod, job=node · Node is down\n- instance=host-0:9100 自 01-01 08:00:00\n"
            ),
            "{first}"
        );
        assert_eq!(first.matches("\n- ").count(), shown.len());
        assert!(
            firing[1].0.starts_with("### NodeDown · 300 台 · critical (续)\n- "),
            "{}",
            firing[1].0
        );
        let lines: usize = firing.iter().map(|(b, _)| b.matches("\n- instance=").count()).sum();
        assert_eq!(lines, 300);
        assert!(firing.iter().all(|(b, _)| b.len() <= MARKDOWN_MAX_BYTES - 160));
        // A resolved crowd of one: its labels are all shared; values escaped.
        let (r, _) = &sections[1].1[0];
        assert!(r.contains("zone=＜b＞") && !r.contains("<b>"), "{r}");
        // Nothing differs in a crowd of one: `-`, as any empty value (`{{differs|}}`: nothing).
        assert!(r.ends_with("\n- - 自 01-01 08:00:00 至 01-01 08:10:00"), "{r}");
        // Without [compact] the built-in look, as before.
        let plain = crate::template::parse("[alert]\n{{labels.alertname}}")?;
        let a = [group(vec![alert("X", "h", "critical", Status::Firing, 0)])];
        assert_eq!(
            compact(&a, CST, MARKDOWN_MAX_BYTES, Some(&plain)),
            compact(&a, CST, MARKDOWN_MAX_BYTES, None)
        );
        Ok(())
    }

    #[test]
    fn hostile_values_stay_inert() {
        let mut a = alert("<@all>", "**x**\n[l](javascript:y)", "critical", Status::Firing, 0);
        a.labels.0.push(("z".into(), "长".repeat(500)));
        let doc = compact(&[group(vec![a.clone(), a])], CST, MARKDOWN_MAX_BYTES, None);
        let text = doc.to_markdown();
        assert!(
            !text.contains("<@all>") && !text.contains("**x**") && !text.contains("[l]"),
            "{text}"
        );
        assert!(text.lines().all(|l| l.len() <= 1200), "{text}");
    }
}
