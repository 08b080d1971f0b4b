//! Storm mode's digest: everything pending for a robot as one short message plus the full list
//! as a file, for when even the compact layout cannot reach the group within `--max-delay`.
//!
//! - [`digest`]: one markdown [`Document`] of at most `limit` bytes (4,096 for WeCom markdown):
//!   totals per status × alertname × severity (firing first, then by severity, critical
//!   first), the newest changes by name, and a pointer to the attached file. Resolved alerts
//!   are always counted in the headline, so a digest never turns a recovery into nothing.
//! - [`full_list`]: the file, UTF-8 markdown named like `alerts-20261202-1030.md`: a heading
//!   with the totals, then one table row per alert (告警中/已恢复, alertname, severity, every
//!   label, start and end in `--tz`, summary, description, link), escaped for table cells and
//!   capped below WeCom's 20 MB upload limit. At the cap firing and resolved rows take turns
//!   for the room, and [`full_list_listed`] says which alerts have a row: only those are told
//!   by the file (the sender settles exactly them), the rest stays pending for the next round.
//! - [`choose`]: which layout the pending state gets, from how many messages each layout needs
//!   and how many the robot may send within `--max-delay`.
//!
//! The input is a list of Alertmanager groups ([`Payload`]s, as `render --digest` reads them and
//! as the outbox's snapshots hold them); each alert's missing labels fall back to its group's
//! common labels, as in the full layout.
//!
//! Pure: no I/O, no clock (the caller passes `now`), no HTTP.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use crate::alertmanager::{Alert, Payload, Status};
use crate::outbox::split::cut_utf8;
use crate::render::{escape, safe_url, Document, Section};
use crate::sort;
use crate::time::{format_time, Timestamp, TzOffset};
use crate::values::Rate;

/// How many of the newest changes the digest names.
pub const NEWEST_NAMED: usize = 8;

/// One alert with the group it came in.
#[derive(Clone, Copy)]
pub struct Item<'a> {
    pub alert: &'a Alert,
    pub group: &'a Payload,
    /// (group, alert) index in the input, so a layout can say which alerts a block shows.
    pub index: (usize, usize),
}

impl Item<'_> {
    /// The alert's label, else its group's common label; `None` when missing or empty.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.alert.labels.get(name).or_else(|| self.group.common_labels.get(name))
    }

    /// The alert's annotation, else its group's common annotation.
    pub fn annotation(&self, name: &str) -> Option<&str> {
        self.alert.annotations.get(name).or_else(|| self.group.common_annotations.get(name))
    }

    /// When its current state began: `endsAt` of a resolved alert, else `startsAt`.
    pub fn changed_at(&self) -> Option<Timestamp> {
        match self.alert.status {
            Status::Resolved => self.alert.ends_at.or(self.alert.starts_at),
            Status::Firing => self.alert.starts_at,
        }
    }

    /// The label that tells this alert from its siblings, as `name=value`.
    pub fn short_name(&self) -> Option<String> {
        for name in ["instance", "pod", "namespace", "node", "job", "service"] {
            if let Some(v) = self.alert.labels.get(name) {
                return Some(format!("{name}={}", escape(v)));
            }
        }
        self.alert
            .labels
            .0
            .iter()
            .find(|(k, v)| k != "alertname" && !v.is_empty())
            .map(|(k, v)| format!("{}={}", escape(k), escape(v)))
    }
}

/// Every alert of every group, in the groups' order.
pub fn items(groups: &[Payload]) -> Vec<Item<'_>> {
    groups
        .iter()
        .enumerate()
        .flat_map(|(gi, g)| {
            g.alerts.iter().enumerate().map(move |(ai, a)| Item {
                alert: a,
                group: g,
                index: (gi, ai),
            })
        })
        .collect()
}

/// Sort rank of a severity: critical first, unknown and missing last.
pub fn severity_rank(severity: &str) -> u8 {
    match severity.to_ascii_lowercase().as_str() {
        "critical" | "fatal" | "emergency" | "page" | "disaster" | "紧急" | "严重" | "致命" => {
            0
        }
        "error" | "high" | "major" | "重要" | "错误" => 1,
        "warning" | "warn" | "medium" | "average" | "警告" | "次要" => 2,
        "info" | "low" | "minor" | "notice" | "none" | "提示" | "一般" | "信息" => 3,
        "" | "-" => 5,
        _ => 4,
    }
}

/// The status word people know from the message layouts.
pub fn status_word(status: Status) -> &'static str {
    match status {
        Status::Firing => "告警中",
        Status::Resolved => "已恢复",
    }
}

fn status_colour(status: Status) -> &'static str {
    match status {
        Status::Firing => "warning",
        Status::Resolved => "info",
    }
}

/// Totals per (status, alertname, severity), firing first, then severity rank, then the
/// largest count, then name.
fn totals(items: &[Item]) -> Vec<((Status, String, String), usize)> {
    let mut map: BTreeMap<(u8, u8, String, String), usize> = BTreeMap::new();
    for item in items {
        let status = u8::from(item.alert.status == Status::Resolved);
        let name = item.label("alertname").unwrap_or("-").to_string();
        let severity = item.label("severity").unwrap_or("-").to_string();
        *map.entry((status, severity_rank(&severity), name, severity)).or_default() += 1;
    }
    let mut rows: Vec<_> = map
        .into_iter()
        .map(|((status, rank, name, severity), n)| {
            let status = if status == 0 { Status::Firing } else { Status::Resolved };
            (rank, (status, name, severity), n)
        })
        .collect();
    sort::sort_by(&mut rows, |a, b| {
        (a.1 .0 == Status::Resolved, a.0, std::cmp::Reverse(a.2), &a.1 .1).cmp(&(
            b.1 .0 == Status::Resolved,
            b.0,
            std::cmp::Reverse(b.2),
            &b.1 .1,
        ))
    });
    rows.into_iter().map(|(_, key, n)| (key, n)).collect()
}

/// The attached file's name: `alerts-YYYYMMDD-HHMM.md` in the display offset.
pub fn file_name(now: Timestamp, tz: TzOffset) -> String {
    let t = format_time(now, tz); // YYYY-MM-DD HH:MM:SS
    let digits: String = t.chars().filter(char::is_ascii_digit).collect();
    let (date, time) = digits.split_at(digits.len().saturating_sub(6));
    format!("alerts-{date}-{}.md", time.get(..4).unwrap_or(time))
}

/// The file name of a digest after one named `previous`: [`file_name`], or, when `previous`
/// was sent in the same minute (same name, or that name with a `-N` suffix), the same name
/// with the next suffix (`alerts-20261202-1030-2.md`, `-3` …), so two files in the group never
/// share a name.
pub fn next_file_name(now: Timestamp, tz: TzOffset, previous: Option<&str>) -> String {
    let base = file_name(now, tz);
    let Some(prev) = previous else {
        return base;
    };
    let stem = base.trim_end_matches(".md");
    if prev == base {
        return format!("{stem}-2.md");
    }
    let n = prev
        .strip_prefix(stem)
        .and_then(|rest| rest.strip_prefix('-'))
        .and_then(|rest| rest.strip_suffix(".md"))
        .and_then(|n| n.parse::<u32>().ok());
    match n {
        Some(n) => format!("{stem}-{}.md", n.saturating_add(1)),
        None => base,
    }
}

/// Appends lines to a block while they fit a byte budget.
struct Block {
    text: String,
}

impl Block {
    fn new(first: String) -> Block {
        Block { text: first }
    }

    /// Adds `\n` + `line` if the block then stays within `max` bytes.
    fn try_line(&mut self, line: &str, max: usize) -> bool {
        if self.text.len() + 1 + line.len() > max {
            return false;
        }
        self.text.push('\n');
        self.text.push_str(line);
        true
    }
}

/// The digest message: at most `limit` bytes of markdown (see the module doc). `file` is the
/// attached file's name, named in the last line.
pub fn digest(groups: &[Payload], tz: TzOffset, file: &str, limit: usize) -> Document {
    let items = items(groups);
    let firing = items.iter().filter(|i| i.alert.status == Status::Firing).count();
    let resolved = items.len() - firing;
    let truncated: u64 = groups.iter().map(|g| g.truncated_alerts).sum();
    let heading = format!("## <font color=\"warning\">告警汇总</font> 共 {} 条", items.len());
    let mut head = format!(
        "> <font color=\"warning\">告警中 {firing}</font> · <font color=\"info\">已恢复 {resolved}</font> · 分组 {}",
        groups.len()
    );
    if truncated > 0 {
        let _ = write!(head, "\n> 另有 {truncated} 条告警被 Alertmanager 截断未列出");
    }
    let footer =
        format!("> 告警太多，逐条发送会超出发送频率：完整列表见随后的附件 {}", escape(file));
    // Fixed parts: heading, headline, footer and the blank lines between blocks.
    let fixed = heading.len() + 2 + head.len() + 2 + footer.len();
    let mut room = limit.saturating_sub(fixed);

    // The newest changes: reserve their room first (they are short and bounded).
    let mut newest: Vec<&Item> = items.iter().collect();
    sort::sort_by_key(&mut newest, |i| std::cmp::Reverse(i.changed_at()));
    let mut newest_block = Block::new("**最新变化**".into());
    let newest_max = room.min(limit / 4).saturating_sub(2);
    for item in newest.iter().take(NEWEST_NAMED) {
        let when = item.changed_at().map_or_else(|| "-".into(), |t| format_time(t, tz));
        let name = cut_utf8(&escape(item.label("alertname").unwrap_or("-")), 60).to_string();
        let who = item.short_name().map(|s| cut_utf8(&s, 80).to_string()).unwrap_or_default();
        let line = format!("> {when} {} {name} {who}", status_word(item.alert.status));
        if !newest_block.try_line(line.trim_end(), newest_max) {
            break;
        }
    }
    let has_newest = newest_block.text.contains('\n');
    if has_newest {
        room = room.saturating_sub(newest_block.text.len() + 2);
    }

    // Totals: firing rows may use what the resolved rows leave (at least a third is kept for
    // them when both are present), each status ends with "… 另有" when rows were left out.
    let rows = totals(&items);
    let mut blocks = Vec::new();
    for status in [Status::Firing, Status::Resolved] {
        let mine: Vec<_> = rows.iter().filter(|((s, ..), _)| *s == status).collect();
        if mine.is_empty() {
            continue;
        }
        let others_need: usize = if status == Status::Firing {
            let resolved_rows = rows.len() - mine.len();
            if resolved_rows == 0 {
                0
            } else {
                (resolved_rows * 60 + 80).min(room / 3)
            }
        } else {
            0
        };
        let max = room.saturating_sub(others_need + 2);
        let colour = status_colour(status);
        let mut block = Block::new(format!("**{}** (告警名称 · 级别 · 条数)", status_word(status)));
        if block.text.len() > max {
            continue;
        }
        let more_room = "> … 另有 9999999 类共 99999999 条".len() + 1;
        let mut shown = 0;
        for ((_, name, severity), n) in &mine {
            let name = cut_utf8(&escape(name), 60).to_string();
            let severity = cut_utf8(&escape(severity), 20).to_string();
            let line = format!("> {name} · <font color=\"{colour}\">{severity}</font> · **{n}**");
            let last = shown + 1 == mine.len();
            if !block.try_line(&line, if last { max } else { max.saturating_sub(more_room) }) {
                break;
            }
            shown += 1;
        }
        if shown < mine.len() {
            let rest: usize = mine[shown..].iter().map(|(_, n)| n).sum();
            block.try_line(&format!("> … 另有 {} 类共 {rest} 条", mine.len() - shown), max);
        }
        room = room.saturating_sub(block.text.len() + 2);
        blocks.push(block.text);
    }
    let mut alerts = vec![head];
    alerts.extend(blocks);
    if has_newest {
        alerts.push(newest_block.text);
    }
    Document { sections: vec![Section { heading, alerts }], footer: Some(footer) }
}

/// A table cell: escaped like message text, and `|` made inert for the table.
fn cell(s: &str) -> String {
    let s = escape(s).replace('|', "\\|");
    if s.is_empty() {
        "-".into()
    } else {
        s
    }
}

/// The full list as a markdown file of at most `max_bytes` (see the module doc). When the
/// alerts would not fit, the last line says how many rows were left out.
pub fn full_list(groups: &[Payload], tz: TzOffset, now: Timestamp, max_bytes: usize) -> String {
    full_list_listed(groups, tz, now, max_bytes).text
}

/// The file and exactly which alerts its rows list.
pub struct FullList {
    pub text: String,
    /// (group, alert) indices of the alerts the file lists a row for, in the file's order.
    /// Only these are told by the file: the rest (left out at the size cap) stays pending.
    pub listed: Vec<(usize, usize)>,
}

/// [`full_list`] with the alerts it lists. Rows are shown firing first, then by severity and
/// start; when they do not all fit, firing and resolved rows take turns for the room (each in
/// that order), so resolved notices are never the ones systematically left out.
pub fn full_list_listed(
    groups: &[Payload],
    tz: TzOffset,
    now: Timestamp,
    max_bytes: usize,
) -> FullList {
    let mut items = items(groups);
    let firing = items.iter().filter(|i| i.alert.status == Status::Firing).count();
    let mut out = format!(
        "# 告警列表 {} (UTC{tz})\n\n共 {} 条：告警中 {firing} 条，已恢复 {} 条；{} 个分组。\n",
        format_time(now, tz),
        items.len(),
        items.len() - firing,
        groups.len(),
    );
    let truncated: u64 = groups.iter().map(|g| g.truncated_alerts).sum();
    if truncated > 0 {
        let _ = writeln!(out, "\n另有 {truncated} 条告警被 Alertmanager 截断，不在此列表中。");
    }
    out.push_str("\n| 状态 | 告警名称 | 级别 | 条数 |\n|---|---|---|---|\n");
    for ((status, name, severity), n) in totals(&items) {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {n} |",
            status_word(status),
            cell(&name),
            cell(&severity)
        );
    }
    out.push_str(
        "\n| 状态 | 告警名称 | 级别 | 标签 | 开始时间 | 结束时间 | 摘要 | 详情 | 链接 |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    sort::sort_by(&mut items, |a, b| {
        let key = |i: &Item| {
            let severity = i.label("severity").unwrap_or("");
            (i.alert.status == Status::Resolved, severity_rank(severity), i.alert.starts_at)
        };
        key(a).cmp(&key(b)).then_with(|| a.label("alertname").cmp(&b.label("alertname")))
    });
    let rows: Vec<String> = items.iter().map(|item| row(item, tz)).collect();
    // Firing rows, then resolved rows (the sort above): each status a run of `rows`.
    let split_at = firing;
    let more = |left: usize| format!("\n另有 {left} 条未列出（文件大小上限），随后另行发送。\n");
    let room = max_bytes.saturating_sub(out.len() + more(items.len()).len());
    let mut taken = [0usize, 0usize];
    let runs = [(0, split_at), (split_at, rows.len())];
    let mut used = 0;
    let mut open = [runs[0].0 < runs[0].1, runs[1].0 < runs[1].1];
    let mut turn = 0;
    while open[0] || open[1] {
        if !open[turn] {
            turn = 1 - turn;
        }
        let i = runs[turn].0 + taken[turn];
        match rows.get(i) {
            Some(r) if i < runs[turn].1 && used + r.len() <= room => {
                used += r.len();
                taken[turn] += 1;
                open[turn] = runs[turn].0 + taken[turn] < runs[turn].1;
            }
            _ => open[turn] = false,
        }
        turn = 1 - turn;
    }
    let mut listed = Vec::new();
    for (run, n) in runs.iter().zip(taken) {
        for i in run.0..run.0 + n {
            out.push_str(&rows[i]);
            listed.push(items[i].index);
        }
    }
    if listed.len() < items.len() {
        out.push_str(&more(items.len() - listed.len()));
    }
    FullList { text: out, listed }
}

/// One alert's table row, with its line break.
fn row(item: &Item, tz: TzOffset) -> String {
    let time = |t: Option<Timestamp>| t.map_or_else(|| "-".into(), |t| format_time(t, tz));
    let labels: Vec<String> = item
        .alert
        .labels
        .0
        .iter()
        .filter(|(k, _)| k != "alertname" && k != "severity")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let link = item
        .alert
        .generator_url
        .as_deref()
        .and_then(safe_url)
        .map_or_else(|| "-".into(), |u| format!("[查看](<{u}>)"));
    let ends = match item.alert.status {
        Status::Resolved => time(item.alert.ends_at),
        Status::Firing => "-".into(),
    };
    let detail = item.annotation("description").or_else(|| item.annotation("message"));
    format!(
        "| {} | {} | {} | {} | {} | {ends} | {} | {} | {link} |\n",
        status_word(item.alert.status),
        cell(item.label("alertname").unwrap_or("")),
        cell(item.label("severity").unwrap_or("")),
        cell(&labels.join(", ")),
        time(item.alert.starts_at),
        cell(item.annotation("summary").unwrap_or("")),
        cell(detail.unwrap_or("")),
    )
}

/// How a robot's pending state is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Today's look: one block per alert.
    Full,
    /// Alerts of the same alertname and status as one block (see `compact`).
    Compact,
    /// One digest message and the full list as a file.
    Digest,
}

/// Most sends [`capacity`] counts: beyond this a budget is plenty whatever is pending, and the
/// count stays cheap with absurd rates.
const CAPACITY_MAX: u64 = 1_000_000;

/// How many messages a robot may send from now until `within` from now, sending each as soon
/// as its budget allows, given how long ago its recent sends finished (`sent_ago`). The rule is
/// the outbox limiter's: at most `rate.messages` sends finished within the window plus a
/// margin of 1/30 of it. With no history and 20/60s: 20 now and 20 more after 62 s, so 40
/// within 2 minutes.
pub fn capacity(rate: Rate, sent_ago: &[Duration], within: Duration) -> u64 {
    let span = (rate.window + rate.window / 30).as_nanos().max(1) as i128;
    let max = rate.messages.max(1) as usize;
    let within = within.as_nanos() as i128;
    let mut log: Vec<i128> =
        sent_ago.iter().map(|d| -(d.as_nanos() as i128)).filter(|t| *t > -span).collect();
    sort::sort(&mut log);
    // Runs of sends at the same time, `(time, count)`: the sends that fit at one instant are
    // counted at once, not pushed one by one (with a lifted budget such as 1000000/1s that was
    // a 16 MB deque built on every storm check of the sender).
    let mut runs: std::collections::VecDeque<(i128, u64)> = std::collections::VecDeque::new();
    for t in log {
        match runs.back_mut() {
            Some((last, n)) if *last == t => *n += 1,
            _ => runs.push_back((t, 1)),
        }
    }
    let mut len: u64 = runs.iter().map(|r| r.1).sum();
    let max = max as u64;
    let (mut t, mut sent) = (0i128, 0u64);
    while sent < CAPACITY_MAX {
        while runs.front().is_some_and(|&(first, _)| t - first >= span) {
            len -= runs.pop_front().map_or(0, |r| r.1);
        }
        if len < max {
            let n = (max - len).min(CAPACITY_MAX - sent);
            match runs.back_mut() {
                Some((last, count)) if *last == t => *count += n,
                _ => runs.push_back((t, n)),
            }
            len += n;
            sent += n;
            continue;
        }
        // Full: the next send waits for the oldest blocking one to leave the window.
        let mut index = len - max;
        for &(time, count) in &runs {
            if index < count {
                t = time + span;
                break;
            }
            index -= count;
        }
        if t > within {
            break;
        }
    }
    sent
}

/// Full when it fits the budget, else compact when that fits, else the digest (two messages:
/// the digest and the file).
pub fn choose(full_messages: usize, compact_messages: usize, budget: u64) -> Layout {
    if full_messages as u64 <= budget {
        Layout::Full
    } else if compact_messages as u64 <= budget {
        Layout::Compact
    } else {
        Layout::Digest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alertmanager::{parse, Pairs};
    use crate::wecom::MARKDOWN_MAX_BYTES;

    const CST: TzOffset = TzOffset { seconds: 8 * 3600 };

    fn ts(unix_seconds: i64) -> Timestamp {
        Timestamp { unix_seconds, nanos: 0 }
    }

    fn pairs(p: &[(&str, &str)]) -> Pairs {
        Pairs(p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    /// A storm: `groups` groups of `per_group` alerts, 8 alertnames, 3 severities,
    /// `resolved_per_10` of every ten alerts resolved.
    fn storm(groups: usize, per_group: usize, resolved_per_10: usize) -> Vec<Payload> {
        let severities = ["critical", "warning", "info"];
        (0..groups)
            .map(|g| {
                let alerts = (0..per_group)
                    .map(|i| {
                        let n = g * per_group + i;
                        let status = if n % 10 < resolved_per_10 {
                            Status::Resolved
                        } else {
                            Status::Firing
                        };
                        Alert {
                            status,
                            labels: pairs(&[
                                ("alertname", &format!("StormAlert{}", n % 8)),
                                ("instance", &format!("host-{g}-{i}.example:9100")),
                                ("job", "node"),
                                ("severity", severities[n % 3]),
                            ]),
                            annotations: pairs(&[
                                ("summary", &format!("alert {n} | pipes")),
                                ("description", "line one\nline two"),
                            ]),
                            starts_at: Some(ts(1_764_640_000 + n as i64)),
                            ends_at: (status == Status::Resolved)
                                .then(|| ts(1_764_650_000 + n as i64)),
                            generator_url: Some("http://prom:9090/graph?g0.expr=up(x)".into()),
                            fingerprint: format!("{n:016x}"),
                        }
                    })
                    .collect();
                Payload {
                    group_labels: pairs(&[("g", &g.to_string())]),
                    common_labels: pairs(&[("job", "node")]),
                    ..Payload::for_test(&format!("{{}}:{{g=\"{g}\"}}"), alerts)
                }
            })
            .collect()
    }

    #[test]
    fn file_name_is_in_the_display_offset() {
        // 2026-12-02 02:30:00 UTC = 10:30 at +08:00.
        let now = Timestamp { unix_seconds: 1_796_178_600, nanos: 0 };
        assert_eq!(format_time(now, TzOffset { seconds: 0 }), "2026-12-02 02:30:00");
        assert_eq!(file_name(now, CST), "alerts-20261202-1030.md");
    }

    /// Issue 15 (adversarial review): two digests in the same minute attached two files named
    /// alike (minute resolution).
    #[test]
    fn issue_15_later_digests_in_the_same_minute_get_distinct_file_names() {
        let now = Timestamp { unix_seconds: 1_796_178_600, nanos: 0 };
        assert_eq!(next_file_name(now, CST, None), "alerts-20261202-1030.md");
        let second = next_file_name(now, CST, Some("alerts-20261202-1030.md"));
        assert_eq!(second, "alerts-20261202-1030-2.md");
        assert_eq!(next_file_name(now, CST, Some(&second)), "alerts-20261202-1030-3.md");
        // Another minute, or a name of another shape: the plain name.
        assert_eq!(
            next_file_name(now, CST, Some("alerts-20261202-1029-4.md")),
            "alerts-20261202-1030.md"
        );
        assert_eq!(
            next_file_name(now, CST, Some("alerts-20261202-1030-x.md")),
            "alerts-20261202-1030.md"
        );
    }

    #[test]
    fn digest_of_a_big_storm_stays_within_the_limit_and_counts_resolved() {
        let groups = storm(200, 50, 3);
        for limit in [MARKDOWN_MAX_BYTES, crate::wecom::TEXT_MAX_BYTES, 600] {
            let doc = digest(&groups, CST, "alerts-20261202-1030.md", limit);
            let md = doc.to_markdown();
            assert!(md.len() <= limit, "{} > {limit}:\n{md}", md.len());
            assert!(md.contains("共 10000 条"), "{md}");
            assert!(md.contains("告警中 7000") && md.contains("已恢复 3000"), "{md}");
            assert!(md.contains("alerts-20261202-1030.md"), "{md}");
        }
        let md = digest(&groups, CST, "f.md", MARKDOWN_MAX_BYTES).to_markdown();
        // 8 alertnames × 3 severities per status: all 48 rows fit at 4 KiB, no "另有".
        assert!(md.contains("**已恢复**") && md.contains("**最新变化**"), "{md}");
        // Firing before resolved, critical before warning within firing.
        let (f, r) = (md.find("**告警中**"), md.find("**已恢复**"));
        assert!(f < r, "{md}");
        let firing_block = &md[f.unwrap_or(0)..r.unwrap_or(0)];
        let crit = firing_block.find("critical").unwrap_or(usize::MAX);
        let warn = firing_block.find("warning</font>").unwrap_or(0);
        assert!(crit < warn, "{firing_block}");
        // The newest change is the last resolved (ends_at is the latest time).
        let newest = &md[md.find("**最新变化**").unwrap_or(0)..];
        assert!(newest.contains("已恢复 StormAlert"), "{newest}");
    }

    #[test]
    fn many_alertnames_are_summed_in_a_more_line() {
        let mut groups = storm(10, 100, 5);
        for (i, a) in groups.iter_mut().flat_map(|g| g.alerts.iter_mut()).enumerate() {
            a.labels.0[0].1 = format!("{}-{i}", "X".repeat(50));
        }
        let md = digest(&groups, CST, "f.md", MARKDOWN_MAX_BYTES).to_markdown();
        assert!(md.len() <= MARKDOWN_MAX_BYTES, "{}", md.len());
        let more: Vec<usize> = md
            .lines()
            .filter_map(|l| l.strip_prefix("> … 另有 "))
            .filter_map(|l| l.split("共 ").nth(1)?.strip_suffix(" 条")?.parse().ok())
            .collect();
        let shown: usize = md
            .lines()
            .filter(|l| l.contains(" · **"))
            .filter_map(|l| l.rsplit("**").nth(1)?.parse::<usize>().ok())
            .sum();
        assert_eq!(more.len(), 2, "one more-line per status:\n{md}");
        assert_eq!(shown + more.iter().sum::<usize>(), 1000, "every alert counted once:\n{md}");
    }

    #[test]
    fn only_resolved_still_says_so() -> Result<(), String> {
        let body = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/resolved.json"),
        )
        .map_err(|e| e.to_string())?;
        let p = parse(&body).map_err(|e| e.to_string())?;
        let md = digest(&[p], CST, "f.md", MARKDOWN_MAX_BYTES).to_markdown();
        assert!(md.contains("告警中 0") && md.contains("**已恢复**"), "{md}");
        assert!(!md.contains("**告警中**"), "{md}");
        Ok(())
    }

    #[test]
    fn hostile_labels_stay_inert_and_within_the_limit() {
        let mut groups = storm(1, 3, 5);
        let evil = format!("<@all>**x**\n| {}", "长".repeat(3000));
        for a in &mut groups[0].alerts {
            a.labels.0[0].1 = evil.clone();
            a.labels.0[1].1 = evil.clone();
        }
        let md = digest(&groups, CST, "f.md", MARKDOWN_MAX_BYTES).to_markdown();
        assert!(md.len() <= MARKDOWN_MAX_BYTES);
        assert!(!md.contains("<@all>") && !md.contains("**x**"), "{md}");
        let file = full_list(&groups, CST, ts(0), 20_000_000);
        assert!(!file.contains("<@all>"), "{file}");
        // One physical line per row: the newline in the label did not break the table.
        let rows =
            file.lines().filter(|l| l.starts_with("| 告警中 ") || l.starts_with("| 已恢复 "));
        assert_eq!(rows.count(), 3 + 3, "three totals rows and three alert rows:\n{file}");
        assert!(file.contains("\\| 长长"), "pipes escaped: {file}");
    }

    #[test]
    fn full_list_has_totals_and_one_row_per_alert() {
        let groups = storm(200, 50, 3);
        let file = full_list(&groups, CST, ts(1_796_178_600), 20_000_000);
        assert!(
            file.starts_with("# 告警列表 2026-12-02 10:30:00 (UTC+08:00)\n"),
            "{}",
            &file[..200]
        );
        assert!(file.contains("共 10000 条：告警中 7000 条，已恢复 3000 条；200 个分组。"));
        let rows: Vec<&str> = file.lines().filter(|l| l.contains(" | [查看](<http")).collect();
        assert_eq!(rows.len(), 10_000);
        assert!(rows[0].starts_with("| 告警中 | StormAlert") && rows[0].contains("| critical |"));
        assert!(rows[9_999].starts_with("| 已恢复 |"), "{}", rows[9_999]);
        let resolved = rows.iter().find(|r| r.starts_with("| 已恢复")).copied().unwrap_or("");
        // Start and end in +08:00; labels other than alertname/severity; escaped summary.
        assert!(resolved.contains("| 2025-12-02 09:46:40 |"), "{resolved}");
        assert!(resolved.contains("instance=host-0-0.example:9100, job=node"), "{resolved}");
        assert!(resolved.contains("\\| pipes | line one line two |"), "{resolved}");
        assert!(resolved.contains("up%28x%29"), "link made safe: {resolved}");
        // Every row has the same number of cells.
        assert!(rows.iter().all(|r| r.matches(" | ").count() == 8), "{}", rows[0]);
    }

    #[test]
    fn full_list_respects_its_size_cap() {
        let groups = storm(20, 50, 3);
        let file = full_list(&groups, CST, ts(0), 100_000);
        assert!(file.len() <= 100_000, "{}", file.len());
        let rows = file.lines().filter(|l| l.contains("[查看]")).count();
        assert!(rows > 0 && rows < 1000, "{rows}");
        assert!(file.ends_with(&format!(
            "另有 {} 条未列出（文件大小上限），随后另行发送。\n",
            1000 - rows
        )));
    }

    /// At the size cap the file's listed set is exactly its rows (the sender settles only
    /// those), and resolved rows get their turn instead of being the ones left out.
    #[test]
    fn full_list_at_its_cap_lists_both_statuses_and_says_which() {
        // 1,000 alerts, 30 % resolved; room for about a tenth of the rows.
        let groups = storm(20, 50, 3);
        let list = full_list_listed(&groups, CST, ts(0), 100_000);
        let rows: Vec<&str> = list.text.lines().filter(|l| l.contains("[查看]")).collect();
        assert_eq!(rows.len(), list.listed.len());
        assert!(rows.len() > 10 && rows.len() < 1000, "{}", rows.len());
        let resolved = rows.iter().filter(|r| r.starts_with("| 已恢复")).count();
        assert!(resolved * 3 >= rows.len(), "{resolved} of {} rows resolved", rows.len());
        // Each listed index names the alert of its row, in the file's order.
        for (r, &(g, a)) in rows.iter().zip(&list.listed) {
            let alert = &groups[g].alerts[a];
            let instance = alert.labels.get("instance").unwrap_or("?");
            assert!(r.contains(&format!("instance={instance},")), "{r} vs {instance}");
            assert_eq!(r.starts_with("| 已恢复"), alert.status == Status::Resolved);
        }
        let mut unique = list.listed.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), list.listed.len());
        // Everything fits: every alert listed, no "另有" line.
        let all = full_list_listed(&groups, CST, ts(0), 20_000_000);
        assert_eq!(all.listed.len(), 1000);
        assert!(!all.text.contains("未列出"));
    }

    /// Random storms (a fixed-seed generator: odd Unicode, long values, many names, random
    /// limits): the digest always fits and its rows and "另有" lines count every alert once.
    #[test]
    fn random_storms_always_fit_and_count_everything() {
        let mut rng = crate::test_rng::xorshift(0x2545_f491_4f6c_dd1d);
        let mut next = move |n: usize| (rng() % n as u64) as usize;
        let pieces = ["a", "长", "🔥", "<", "|", "*", "\n", " ", "x_y", "Ünï"];
        for round in 0..40 {
            let mut word = |max: usize| -> String {
                (0..1 + next(max)).map(|_| pieces[next(pieces.len())]).collect()
            };
            let mut groups = storm(1 + round % 5, 1 + round * 7, round % 10);
            for a in groups.iter_mut().flat_map(|g| g.alerts.iter_mut()) {
                a.labels.0[0].1 = word(if round % 2 == 0 { 4 } else { 80 });
                a.labels.0[3].1 = word(3);
            }
            let limit = 500 + next(3_600);
            let md = digest(&groups, CST, "alerts-20261202-1030.md", limit).to_markdown();
            assert!(md.len() <= limit, "round {round}: {} > {limit}", md.len());
            let total: usize = groups.iter().map(|g| g.alerts.len()).sum();
            let shown: usize = md
                .lines()
                .filter(|l| l.starts_with("> ") && l.ends_with("**") && l.contains(" · **"))
                .filter_map(|l| l.rsplit("**").nth(1)?.parse::<usize>().ok())
                .sum();
            let more: usize = md
                .lines()
                .filter_map(|l| l.strip_prefix("> … 另有 "))
                .filter_map(|l| l.split("共 ").nth(1)?.strip_suffix(" 条")?.parse::<usize>().ok())
                .sum();
            let blocks = md.contains("**告警中**") || md.contains("**已恢复**");
            if blocks && limit >= 1500 {
                assert_eq!(shown + more, total, "round {round}, limit {limit}:\n{md}");
            }
            assert!(md.contains(&format!("共 {total} 条")), "{md}");
        }
    }

    #[test]
    fn severities_rank_critical_first() {
        let mut words = ["info", "", "warning", "严重", "bogus", "error", "CRITICAL"];
        words.sort_by_key(|w| severity_rank(w));
        assert_eq!(words, ["严重", "CRITICAL", "error", "warning", "info", "bogus", ""]);
    }

    #[test]
    fn layout_choice_follows_the_budget() {
        let rate = Rate { messages: 20, window: Duration::from_secs(60) };
        let secs = Duration::from_secs;
        // Fresh: 20 now, 20 after 62 s (window + 1/30 margin), 20 after 124 s.
        assert_eq!(capacity(rate, &[], secs(30)), 20);
        assert_eq!(capacity(rate, &[], secs(120)), 40);
        assert_eq!(capacity(rate, &[], secs(124)), 60);
        // The issue's bench: 20 per 6 s and 12 s of max-delay.
        let fast = Rate { messages: 20, window: secs(6) };
        assert_eq!(capacity(fast, &[], secs(12)), 40);
        // A spent budget: 20 sends 10 s ago free up 52 s from now.
        let spent = [secs(10); 20];
        assert_eq!(capacity(rate, &spent, secs(30)), 0);
        assert_eq!(capacity(rate, &spent, secs(52)), 20);
        // Half spent long ago, half recently.
        let mixed: Vec<Duration> = (0..20).map(|i| secs(if i < 10 { 63 } else { 5 })).collect();
        assert_eq!(capacity(rate, &mixed, secs(0)), 10);
        assert_eq!(capacity(rate, &mixed, secs(57)), 20);
        // Absurd rates stay bounded.
        let silly = Rate { messages: u32::MAX, window: Duration::from_nanos(1) };
        assert_eq!(capacity(silly, &[], secs(1_000_000_000)), CAPACITY_MAX);
        assert_eq!(choose(3, 1, 20), Layout::Full);
        assert_eq!(choose(108, 12, 60), Layout::Compact);
        assert_eq!(choose(800, 120, 60), Layout::Digest);
    }
}
