//! Fitting documents into WeCom's message size limit: [`split`] one long notification into
//! numbered parts (`outbox::compose` packs short ones into one message).
//!
//! Invariants: no returned message exceeds the limit in UTF-8 bytes; a notification is cut only
//! between alerts, except a single alert that alone exceeds the limit, which is cut on a
//! character boundary with a visible marker; every part repeats the heading of the section it
//! continues, so each message reads on its own.

use crate::render::{push_block, Document};

/// Appended where a single alert had to be cut.
pub const CUT_MARKER: &str = "…（内容过长已截断）";

/// Separator between blocks and between merged notifications.
const SEP: &str = "\n\n";

/// One part under construction: the section it opens with, the section of its last block,
/// and the blocks after its opening heading.
struct Part {
    heading: usize,
    last_section: usize,
    body: String,
    /// Alert blocks in this part (the footer is not one).
    alerts: usize,
}

/// Splits a document into messages of at most `limit` bytes, numbered "(i/n)" when n > 1.
pub fn split(doc: &Document, limit: usize) -> Vec<String> {
    split_counted(doc, limit).into_iter().map(|(text, _)| text).collect()
}

/// [`split`], with the number of alert blocks each part holds (blocks keep the document's
/// order, so the sender knows which alerts a delivered part told).
pub fn split_counted(doc: &Document, limit: usize) -> Vec<(String, usize)> {
    let whole = doc.to_markdown();
    if whole.len() <= limit {
        return vec![(whole, doc.sections.iter().map(|s| s.alerts.len()).sum())];
    }
    let headings: Vec<&str> = doc.sections.iter().map(|s| s.heading.as_str()).collect();
    let units = doc.sections.iter().map(|s| s.alerts.len()).sum::<usize>() + 1;
    // Room for " (i/n)" with as many digits as the worst case needs.
    let digits = units.to_string().len();
    let suffix_room = " (/)".len() + 2 * digits;

    let mut parts: Vec<Part> = Vec::new();
    for (section_index, section) in doc.sections.iter().enumerate() {
        for alert in &section.alerts {
            add_block(&mut parts, &headings, section_index, alert, limit, suffix_room);
            if let Some(part) = parts.last_mut() {
                part.alerts += 1;
            }
        }
    }
    if let Some(footer) = &doc.footer {
        let last = doc.sections.len().saturating_sub(1);
        add_block(&mut parts, &headings, last, footer, limit, suffix_room);
    }

    let n = parts.len();
    parts
        .into_iter()
        .enumerate()
        .map(|(i, part)| {
            let heading = headings.get(part.heading).copied().unwrap_or("");
            let mut out =
                if n > 1 { format!("{heading} ({}/{n})", i + 1) } else { heading.to_string() };
            if !part.body.is_empty() {
                out.push_str(SEP);
                out.push_str(&part.body);
            }
            (out, part.alerts)
        })
        .collect()
}

/// Adds one block to the last part, or opens a new part for it.
fn add_block(
    parts: &mut Vec<Part>,
    headings: &[&str],
    section: usize,
    block: &str,
    limit: usize,
    suffix_room: usize,
) {
    let heading = |i: usize| headings.get(i).copied().unwrap_or("");
    if let Some(part) = parts.last_mut() {
        // A block of the next section inside the same part brings that section's heading along.
        let new_section = part.last_section != section;
        let addition = if new_section { SEP.len() + heading(section).len() } else { 0 };
        let current = heading(part.heading).len() + suffix_room + SEP.len() + part.body.len();
        if current + addition + SEP.len() + block.len() <= limit {
            if new_section {
                push_block(&mut part.body, heading(section));
                part.last_section = section;
            }
            push_block(&mut part.body, block);
            return;
        }
    }
    let room = limit.saturating_sub(heading(section).len() + suffix_room + SEP.len());
    let body = if block.len() <= room {
        block.to_string()
    } else {
        let keep = cut_utf8(block, room.saturating_sub(CUT_MARKER.len()));
        format!("{keep}{CUT_MARKER}")
    };
    parts.push(Part { heading: section, last_section: section, body, alerts: 0 });
}

/// The longest prefix of `s` that is at most `max_bytes` long and ends on a char boundary.
pub fn cut_utf8(s: &str, max_bytes: usize) -> &str {
    if s.len() <= max_bytes {
        return s;
    }
    let mut end = max_bytes;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alertmanager::{Alert, Pairs, Payload, Status};
    use crate::render::render;
    use crate::time::{Timestamp, TzOffset};
    use crate::wecom::MARKDOWN_MAX_BYTES;

    /// `crate::test_rng::xorshift`, with bounds and text.
    struct Rng(Box<dyn FnMut() -> u64>);
    impl Rng {
        fn new(seed: u64) -> Rng {
            Rng(Box::new(crate::test_rng::xorshift(seed)))
        }
        fn below(&mut self, n: u64) -> u64 {
            (self.0)() % n.max(1)
        }
        fn text(&mut self, max_chars: u64) -> String {
            const ALPHABET: &[char] =
                &['a', 'Z', '9', ' ', '告', '警', '🔥', '<', '*', '\n', 'é', '_'];
            (0..self.below(max_chars))
                .map(|_| ALPHABET[self.below(ALPHABET.len() as u64) as usize])
                .collect()
        }
    }

    fn random_payload(rng: &mut Rng) -> Payload {
        let n = rng.below(60) as usize;
        let alerts = (0..n)
            .map(|i| {
                let long = rng.below(10) == 0;
                Alert {
                    status: if rng.below(3) == 0 { Status::Resolved } else { Status::Firing },
                    labels: Pairs(vec![
                        ("alertname".into(), format!("A{i}-{}", rng.text(20))),
                        ("instance".into(), rng.text(40)),
                    ]),
                    annotations: Pairs(vec![(
                        "description".into(),
                        rng.text(if long { 3000 } else { 200 }),
                    )]),
                    starts_at: Some(Timestamp {
                        unix_seconds: rng.below(2_000_000_000) as i64,
                        nanos: 0,
                    }),
                    ends_at: None,
                    generator_url: None,
                    fingerprint: format!("fp{i}"),
                }
            })
            .collect();
        Payload { truncated_alerts: rng.below(3), ..Payload::for_test("g", alerts) }
    }

    #[test]
    fn property_every_part_fits_and_every_alert_survives() {
        let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
        for round in 0..400 {
            let payload = random_payload(&mut rng);
            let doc = render(&payload, TzOffset { seconds: 0 });
            let parts = split(&doc, MARKDOWN_MAX_BYTES);
            assert!(!parts.is_empty());
            for p in &parts {
                assert!(p.len() <= MARKDOWN_MAX_BYTES, "round {round}: {} bytes", p.len());
                assert!(std::str::from_utf8(p.as_bytes()).is_ok());
            }
            let all = parts.join("\n");
            for (i, alert) in payload.alerts.iter().enumerate() {
                let name = crate::render::escape(alert.labels.get("alertname").unwrap_or(""));
                assert!(all.contains(&name), "round {round}: alert {i} missing");
            }
            if parts.len() > 1 {
                for (i, p) in parts.iter().enumerate() {
                    let tag = format!("({}/{})", i + 1, parts.len());
                    assert!(
                        p.lines().next().is_some_and(|l| l.ends_with(&tag)),
                        "round {round}: {tag}"
                    );
                }
            }
        }
    }

    #[test]
    fn one_huge_alert_is_cut_on_a_char_boundary() {
        let mut rng = Rng::new(7);
        let mut payload = random_payload(&mut rng);
        payload.alerts.truncate(1);
        payload.truncated_alerts = 0;
        payload.alerts[0].annotations = Pairs(vec![("description".into(), "告".repeat(3000))]);
        let parts = split(&render(&payload, TzOffset { seconds: 0 }), MARKDOWN_MAX_BYTES);
        assert_eq!(parts.len(), 1);
        assert!(parts[0].len() <= MARKDOWN_MAX_BYTES);
        assert!(parts[0].ends_with(CUT_MARKER));
    }

    #[test]
    fn cut_never_splits_a_char() {
        let s = "a告b";
        assert_eq!(cut_utf8(s, 2), "a");
        assert_eq!(cut_utf8(s, 4), "a告");
        assert_eq!(cut_utf8(s, 99), s);
    }
}
