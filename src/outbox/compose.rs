//! Messages composed at send time from the pending state ([`super::queue::Snapshot`]), with the
//! robot's *current* message type, template, mentions and size limit: a reload that changes
//! any of them applies to everything still queued.
//!
//! The look is 1.0's: one message per Alertmanager group when it fits; when several groups
//! wait, as many whole groups as fit packed into one message (a backlog fills messages to
//! ≥ 85 % of 4,096 bytes); a group too long for one message split at alert boundaries with
//! "(i/n)"; the @-mention text after the group it belongs to. A group or alert that WeCom
//! refused as part of something bigger is sent on its own (see `queue::Queue::settle`).
//!
//! Pure: no I/O. Only [`Message::body`] knows WeCom's JSON, through `wecom`.

use crate::alertmanager::{Payload, Status};
use crate::config_file::MentionEntry;
use crate::outbox::queue::{Cover, GroupSnap, Snapshot};
use crate::outbox::split;
use crate::render;
use crate::template::Template;
use crate::time::TzOffset;
use crate::wecom::{self, MsgType};

/// 1.0.0 queued a mention as a whole JSON body behind this marker; kept to read its spool.
pub const LEGACY_RAW_BODY_MARKER: &str = "\u{1}raw-body\u{1}";

/// One message to WeCom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Notification content in a message type (markdown, markdown_v2 or text).
    Content { msgtype: MsgType, content: String },
    /// A `text` message that @-mentions people (markdown can mention only by user id).
    Mention { content: String, users: Vec<String>, mobiles: Vec<String>, all: bool },
    /// A complete JSON body queued by 1.0.0, sent as it is.
    Raw(String),
}

impl Message {
    /// The JSON body to POST.
    pub fn body(&self) -> String {
        match self {
            Message::Content { msgtype, content } => msgtype.body(content),
            Message::Mention { content, users, mobiles, all } => {
                wecom::text_body(content, users, mobiles, *all)
            }
            Message::Raw(json) => json.clone(),
        }
    }

    /// What a human reads (logs, `failed/`).
    pub fn text(&self) -> &str {
        match self {
            Message::Content { content, .. } | Message::Mention { content, .. } => content,
            Message::Raw(json) => json,
        }
    }
}

/// A message with what it tells.
#[derive(Clone, Debug)]
pub struct Composed {
    pub message: Message,
    pub cover: Cover,
    /// `(i, n)` for part i of a group split into n.
    pub part: Option<(usize, usize)>,
    pub groups: usize,
}

/// How the robot's messages look right now.
pub struct Style<'a> {
    pub msgtype: MsgType,
    pub template: Option<&'a Template>,
    pub tz: TzOffset,
}

impl Style<'_> {
    fn parts(&self, payload: &Payload) -> Vec<(String, usize)> {
        let doc = match self.template {
            Some(t) => t.render(payload, self.tz),
            None => render::render(payload, self.tz),
        };
        split::split_counted(&render::adapt(doc, self.msgtype), self.msgtype.limit())
    }

    fn content(&self, content: String) -> Message {
        Message::Content { msgtype: self.msgtype, content }
    }
}

/// A 1.0.0 piece as the message it was meant to be.
fn legacy(text: String, style: &Style) -> Message {
    if let Some(raw) = text.strip_prefix(LEGACY_RAW_BODY_MARKER) {
        return Message::Raw(raw.to_string());
    }
    // Rendered as markdown then; sent as the robot's type when it fits, else as markdown.
    let msgtype =
        if text.len() <= style.msgtype.limit() { style.msgtype } else { MsgType::Markdown };
    Message::Content { msgtype, content: text }
}

fn covers(g: &GroupSnap, range: std::ops::Range<usize>) -> Vec<(String, String, u64)> {
    g.versions[range].iter().map(|(id, v)| (g.key.clone(), id.clone(), *v)).collect()
}

/// The mention text for a group, when someone is to be mentioned.
/// One @-mention for many groups at once (storm mode's compact and digest rounds): everyone
/// any of them would mention, with the firing count and alertnames over all of them.
pub fn mention_all(
    payloads: &[Payload],
    mentions: &dyn Fn(&Payload) -> MentionEntry,
) -> Option<Composed> {
    let first = payloads.first()?;
    let mut who = MentionEntry::default();
    let mut merged =
        Payload { alerts: Vec::new(), common_labels: Default::default(), ..first.clone() };
    for p in payloads {
        let m = mentions(p);
        who.users.extend(m.users);
        who.mobiles.extend(m.mobiles);
        who.all |= m.all;
        for a in p.alerts.iter().filter(|a| a.status == Status::Firing) {
            let mut a = a.clone();
            if a.labels.get("alertname").is_none() {
                if let Some(name) = p.common_labels.get("alertname") {
                    a.labels.0.push(("alertname".into(), name.to_string()));
                }
            }
            merged.alerts.push(a);
        }
    }
    who.users.sort();
    who.users.dedup();
    who.mobiles.sort();
    who.mobiles.dedup();
    mention(&merged, &who)
}

fn mention(payload: &Payload, who: &MentionEntry) -> Option<Composed> {
    if !who.all && who.users.is_empty() && who.mobiles.is_empty() {
        return None;
    }
    let firing: Vec<_> = payload.alerts.iter().filter(|a| a.status == Status::Firing).collect();
    if firing.is_empty() {
        return None;
    }
    let mut names: Vec<&str> = firing
        .iter()
        .filter_map(|a| {
            a.labels.get("alertname").or_else(|| payload.common_labels.get("alertname"))
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    let text = format!("【告警通知】{} 条告警待处理: {}", firing.len(), names.join(", "));
    let content = split::cut_utf8(&text, wecom::TEXT_MAX_BYTES).to_string();
    Some(Composed {
        message: Message::Mention {
            content,
            users: who.users.clone(),
            mobiles: who.mobiles.clone(),
            all: who.all,
        },
        cover: Cover::default(),
        part: None,
        groups: 0,
    })
}

/// The next messages to send, in order: one legacy piece; or one solo alert; or one group's
/// parts; or several whole groups packed into one message; each followed by its mention.
/// `mentions` says who to mention for a group's pending alerts (current config).
pub fn compose(
    snapshot: Snapshot,
    style: &Style,
    mentions: &dyn Fn(&Payload) -> MentionEntry,
) -> Vec<Composed> {
    let groups = match snapshot {
        Snapshot::Legacy { record, text } => {
            return vec![Composed {
                message: legacy(text, style),
                cover: Cover { legacy: Some(record), alerts: Vec::new() },
                part: None,
                groups: 1,
            }];
        }
        Snapshot::Groups(groups) => groups,
    };
    let Some(first) = groups.first() else { return Vec::new() };
    let mut out = Vec::new();

    if let Some(i) = first.solo.iter().position(|s| *s) {
        let mut payload = first.payload.clone();
        payload.alerts = vec![payload.alerts.swap_remove(i)];
        payload.status = payload.alerts[0].status;
        let parts = style.parts(&payload);
        // The alert is told with the part holding its block (counted as for a group), else
        // with the last part; a refused part before it refuses it too (see `sender`).
        let counted = parts.iter().map(|(_, c)| c).sum::<usize>() == 1;
        let carrier = match parts.iter().position(|(_, c)| *c == 1) {
            Some(p) if counted => p,
            _ => parts.len().saturating_sub(1),
        };
        for (p, (text, _)) in parts.into_iter().enumerate() {
            let alerts = if p == carrier { covers(first, i..i + 1) } else { Vec::new() };
            out.push(Composed {
                message: style.content(text),
                cover: Cover { legacy: None, alerts },
                part: None,
                groups: 1,
            });
        }
        out.extend(mention(&payload, &mentions(&payload)));
        return out;
    }

    let parts = style.parts(&first.payload);
    let alerts = first.payload.alerts.len();
    if parts.len() > 1 || first.alone {
        let n = parts.len();
        // Blocks map to alerts in order; if a template did not keep one block per alert,
        // the group counts as told only with its last part.
        let counted = parts.iter().map(|(_, c)| c).sum::<usize>() == alerts;
        let mut offset = 0;
        for (i, (text, count)) in parts.into_iter().enumerate() {
            let range = if counted {
                offset..offset + count
            } else if i + 1 == n {
                0..alerts
            } else {
                0..0
            };
            offset += count;
            out.push(Composed {
                message: style.content(text),
                cover: Cover { legacy: None, alerts: covers(first, range) },
                part: (n > 1).then_some((i + 1, n)),
                groups: 1,
            });
        }
        out.extend(mention(&first.payload, &mentions(&first.payload)));
        return out;
    }

    let limit = style.msgtype.limit();
    let mut text = parts.into_iter().next().map(|(t, _)| t).unwrap_or_default();
    let mut cover = covers(first, 0..alerts);
    let mut packed = vec![first];
    for g in &groups[1..] {
        if g.alone || g.solo.iter().any(|s| *s) {
            break;
        }
        let mut parts = style.parts(&g.payload);
        if parts.len() != 1 {
            break;
        }
        let (next, _) = parts.remove(0);
        if text.len() + 2 + next.len() > limit {
            break;
        }
        render::push_block(&mut text, &next);
        cover.extend(covers(g, 0..g.payload.alerts.len()));
        packed.push(g);
    }
    out.push(Composed {
        message: style.content(text),
        cover: Cover { legacy: None, alerts: cover },
        part: None,
        groups: packed.len(),
    });
    for g in packed {
        out.extend(mention(&g.payload, &mentions(&g.payload)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alertmanager::{Alert, Pairs};
    use crate::outbox::queue::{Admit, Queue, QueueLimits};
    use crate::time::Timestamp;
    use std::time::{Duration, Instant};

    fn alert(fp: &str, desc_bytes: usize) -> Alert {
        Alert {
            status: Status::Firing,
            labels: Pairs(vec![("alertname".into(), format!("A-{fp}"))]),
            annotations: Pairs(vec![("description".into(), "x".repeat(desc_bytes))]),
            starts_at: Some(Timestamp { unix_seconds: 1, nanos: 0 }),
            ends_at: None,
            generator_url: None,
            fingerprint: fp.into(),
        }
    }

    #[test]
    fn one_mention_for_many_groups() {
        let group = Payload::for_test;
        let mut resolved = alert("r1", 1);
        resolved.status = Status::Resolved;
        let payloads = vec![
            group("g1", vec![alert("a", 1), alert("b", 1)]),
            group("g2", vec![alert("a", 1), resolved]),
            group("g3", vec![]),
        ];
        let who = |p: &Payload| MentionEntry {
            users: vec![format!("on-{}", p.group_key), "lead".into()],
            ..MentionEntry::default()
        };
        let m = mention_all(&payloads, &who).map(|c| c.message);
        let Some(Message::Mention { content, users, .. }) = m else { panic!("{m:?}") };
        assert_eq!(content, "【告警通知】3 条告警待处理: A-a, A-b");
        assert_eq!(users, ["lead", "on-g1", "on-g2", "on-g3"]);
        let nobody = |_: &Payload| MentionEntry::default();
        assert!(mention_all(&payloads, &nobody).is_none());
    }

    fn queue_with(groups: &[(&str, Vec<Alert>)]) -> Queue {
        let mut q = Queue::new(QueueLimits {
            max_messages: 1000,
            max_bytes: 1 << 30,
            dedup_window: Duration::from_secs(60),
            message_bytes: 4096,
            max_told: 100_000,
        });
        let now = Instant::now();
        for (i, (g, alerts)) in groups.iter().enumerate() {
            let p = Payload::for_test(g, alerts.clone());
            if let Ok(Admit::Room(r)) = q.admit(&p, now) {
                q.apply(r, i as u64 + 1, p, now);
            }
        }
        q
    }

    const STYLE: Style =
        Style { msgtype: MsgType::Markdown, template: None, tz: TzOffset { seconds: 0 } };

    fn nobody(_: &Payload) -> MentionEntry {
        MentionEntry::default()
    }

    #[test]
    fn small_groups_pack_into_one_message() {
        let q = queue_with(&[("g1", vec![alert("a", 10)]), ("g2", vec![alert("b", 10)])]);
        let out = compose(q.next(64).expect("pending"), &STYLE, &nobody);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].groups, 2);
        assert_eq!(out[0].cover.alerts.len(), 2);
    }

    #[test]
    fn text_msgtype_splits_within_2048_and_covers_every_alert_once() {
        let alerts: Vec<Alert> = (0..10).map(|i| alert(&format!("f{i}"), 300)).collect();
        let q = queue_with(&[("g", alerts)]);
        let style = Style { msgtype: MsgType::Text, ..STYLE };
        let out = compose(q.next(64).expect("pending"), &style, &nobody);
        assert!(out.len() > 1);
        let mut covered: Vec<String> = Vec::new();
        for c in &out {
            assert!(c.message.text().len() <= 2048);
            assert!(matches!(c.message.body().as_str(), b if b.contains("\"msgtype\":\"text\"")));
            covered.extend(c.cover.alerts.iter().map(|(_, id, _)| id.clone()));
        }
        covered.sort();
        assert_eq!(covered.len(), 10);
        covered.dedup();
        assert_eq!(covered.len(), 10);
    }

    #[test]
    fn a_split_solo_alert_is_told_by_the_part_holding_it() {
        let mut q = queue_with(&[("g", vec![alert("a", 10_000), alert("b", 10)])]);
        // WeCom refused the two together: each goes alone now.
        let Some(Snapshot::Groups(g)) = q.next(64) else { panic!("nothing pending") };
        let mut both = Cover::default();
        for (id, v) in &g[0].versions {
            both.alerts.push(("g".to_string(), id.clone(), *v));
        }
        let settled = q.settle(&both, crate::outbox::queue::Outcome::Refused, Instant::now());
        assert!(settled.isolated);
        let Some(Snapshot::Groups(mut g)) = q.next(64) else { panic!("nothing pending") };
        // A footer ("3 more alerts not listed") after the cut alert makes a second part.
        g[0].payload.truncated_alerts = 3;
        let out = compose(Snapshot::Groups(g), &STYLE, &nobody);
        assert!(out.len() > 1, "the big alert is cut, its footer is a part of its own");
        let carriers: Vec<usize> =
            (0..out.len()).filter(|p| !out[*p].cover.alerts.is_empty()).collect();
        assert_eq!(carriers.len(), 1);
        let carrier = &out[carriers[0]];
        assert!(carrier.message.text().contains("A-a"));
        assert_eq!(carrier.cover.alerts[0].1, "a");
    }

    #[test]
    fn mentions_follow_their_group() {
        let q = queue_with(&[("g", vec![alert("a", 10)])]);
        let who = |_: &Payload| MentionEntry { users: vec!["u1".into()], ..Default::default() };
        let out = compose(q.next(64).expect("pending"), &STYLE, &who);
        assert_eq!(out.len(), 2);
        assert!(out[1].message.body().contains("\"mentioned_list\":[\"u1\"]"));
        assert!(out[1].cover.alerts.is_empty());
    }

    #[test]
    fn legacy_raw_bodies_are_sent_as_they_are() {
        let snap = Snapshot::Legacy { record: 1, text: format!("{LEGACY_RAW_BODY_MARKER}{{}}") };
        let out = compose(snap, &STYLE, &nobody);
        assert_eq!(out[0].message.body(), "{}");
    }
}
