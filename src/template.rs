//! User templates: a deliberately small syntax of our own that replaces the built-in layout.
//!
//! Why not a template engine crate: the layout needs placeholders, two conditionals and a
//! per-alert block, and every error must be found when the file loads. A general engine (with
//! loops, filters, includes) adds hundreds of kilobytes and errors that surface at render time.
//!
//! A template file has three sections; `[alert]` is required:
//!
//! ```text
//! [firing_heading]
//! ## <font color="warning">🔥 {{count}} 条告警</font>
//! [resolved_heading]
//! ## <font color="info">✅ {{count}} 条恢复</font>
//! [alert]
//! **{{labels.alertname}}** ({{labels.severity}})
//! > 实例: {{labels.instance}}
//! > 开始: {{starts_at}}{{#resolved}}, 恢复: {{ends_at}}{{/resolved}}
//! > {{annotations.description}}
//! ```
//!
//! Placeholders: `{{labels.NAME}}`, `{{annotations.NAME}}` (the alert's, else the group's
//! common ones, else `-`), `{{status}}`, `{{starts_at}}`, `{{ends_at}}` (in `--tz`),
//! `{{generator_url}}`, `{{fingerprint}}`, `{{colour}}` (`warning` firing, `info` resolved),
//! and `{{count}}` in headings. `{{#firing}}…{{/firing}}` and `{{#resolved}}…{{/resolved}}`
//! keep their text for alerts of that status. Values are escaped like the built-in layout's,
//! so label text still cannot inject markup. The rendered alerts are split and merged exactly
//! like the built-in ones.

use crate::alertmanager::{Alert, Payload, Status};
use crate::render::{escape, safe_url, Document, Section};
use crate::time::{format_time, TzOffset};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Var {
    Label(String),
    Annotation(String),
    Status,
    StartsAt,
    EndsAt,
    GeneratorUrl,
    Fingerprint,
    Colour,
    Count,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Text(String),
    Var(Var),
    If(Status, Vec<Node>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    firing_heading: Vec<Node>,
    resolved_heading: Vec<Node>,
    alert: Vec<Node>,
}

pub fn load(path: &std::path::Path) -> Result<Template, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

pub fn parse(text: &str) -> Result<Template, String> {
    // Split into sections, remembering where each starts for error messages.
    let mut sections: Vec<(String, usize, String)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if let Some(name) = trimmed.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            if !name.contains(['{', '}', ' ']) && !name.is_empty() {
                sections.push((name.to_string(), n + 2, String::new()));
                continue;
            }
        }
        match sections.last_mut() {
            Some((_, _, body)) => {
                if !body.is_empty() {
                    body.push('\n');
                }
                body.push_str(line);
            }
            None if trimmed.is_empty() => {}
            None => return Err(format!("line {}: text before the first [section]", n + 1)),
        }
    }
    let mut t = Template {
        firing_heading: vec![
            Node::Text("## <font color=\"warning\">告警通知</font> 共 ".into()),
            Node::Var(Var::Count),
            Node::Text(" 条".into()),
        ],
        resolved_heading: vec![
            Node::Text("## <font color=\"info\">恢复通知</font> 共 ".into()),
            Node::Var(Var::Count),
            Node::Text(" 条".into()),
        ],
        alert: Vec::new(),
    };
    let mut has_alert = false;
    for (name, first_line, body) in sections {
        let body = body.trim_end_matches('\n');
        let heading = name != "alert";
        let nodes = parse_nodes(body, first_line, heading)?;
        match name.as_str() {
            "firing_heading" => t.firing_heading = nodes,
            "resolved_heading" => t.resolved_heading = nodes,
            "alert" => {
                t.alert = nodes;
                has_alert = true;
            }
            other => {
                return Err(format!(
                    "line {}: unknown section [{other}]; expected [firing_heading], [resolved_heading] or [alert]",
                    first_line - 1
                ))
            }
        }
    }
    if !has_alert {
        return Err("no [alert] section".into());
    }
    Ok(t)
}

fn parse_nodes(body: &str, first_line: usize, heading: bool) -> Result<Vec<Node>, String> {
    // A stack of open conditionals: (status, nodes so far, line opened).
    let mut stack: Vec<(Option<Status>, Vec<Node>, usize)> = vec![(None, Vec::new(), first_line)];
    let mut rest = body;
    let mut line = first_line;
    while !rest.is_empty() {
        let Some(open) = rest.find("{{") else {
            push_text(&mut stack, rest);
            break;
        };
        push_text(&mut stack, &rest[..open]);
        line += rest[..open].matches('\n').count();
        let after = &rest[open + 2..];
        let close = after.find("}}").ok_or_else(|| format!("line {line}: {{{{ without }}}}"))?;
        let tag = after[..close].trim();
        rest = &after[close + 2..];
        if let Some(cond) = tag.strip_prefix('#') {
            let status = condition(cond).ok_or_else(|| {
                format!("line {line}: unknown {{{{#{cond}}}}}; use #firing or #resolved")
            })?;
            stack.push((Some(status), Vec::new(), line));
        } else if let Some(cond) = tag.strip_prefix('/') {
            let status =
                condition(cond).ok_or_else(|| format!("line {line}: unknown {{{{/{cond}}}}}"))?;
            match stack.pop() {
                Some((Some(open_status), nodes, _)) if open_status == status => {
                    if let Some(parent) = stack.last_mut() {
                        parent.1.push(Node::If(status, nodes));
                    }
                }
                _ => return Err(format!("line {line}: {{{{/{cond}}}}} closes nothing open")),
            }
        } else {
            let var = variable(tag)
                .ok_or_else(|| format!("line {line}: unknown placeholder {{{{{tag}}}}}"))?;
            if var == Var::Count && !heading {
                return Err(format!("line {line}: {{{{count}}}} is only for headings"));
            }
            if heading && !matches!(var, Var::Count) {
                return Err(format!("line {line}: headings know only {{{{count}}}}"));
            }
            if let Some(top) = stack.last_mut() {
                top.1.push(Node::Var(var));
            }
        }
    }
    if stack.len() > 1 {
        let opened = stack.last().map_or(line, |s| s.2);
        return Err(format!("line {opened}: a {{{{#…}}}} block is never closed"));
    }
    Ok(stack.pop().map(|s| s.1).unwrap_or_default())
}

fn push_text(stack: &mut [(Option<Status>, Vec<Node>, usize)], text: &str) {
    if !text.is_empty() {
        if let Some(top) = stack.last_mut() {
            top.1.push(Node::Text(text.to_string()));
        }
    }
}

fn condition(name: &str) -> Option<Status> {
    match name.trim() {
        "firing" => Some(Status::Firing),
        "resolved" => Some(Status::Resolved),
        _ => None,
    }
}

fn variable(tag: &str) -> Option<Var> {
    let valid_name =
        |n: &str| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if let Some(name) = tag.strip_prefix("labels.") {
        return valid_name(name).then(|| Var::Label(name.to_string()));
    }
    if let Some(name) = tag.strip_prefix("annotations.") {
        return valid_name(name).then(|| Var::Annotation(name.to_string()));
    }
    Some(match tag {
        "status" => Var::Status,
        "starts_at" => Var::StartsAt,
        "ends_at" => Var::EndsAt,
        "generator_url" => Var::GeneratorUrl,
        "fingerprint" => Var::Fingerprint,
        "colour" | "color" => Var::Colour,
        "count" => Var::Count,
        _ => return None,
    })
}

impl Template {
    /// The payload as a [`Document`], in this template's layout.
    pub fn render(&self, payload: &Payload, tz: TzOffset) -> Document {
        let mut sections = Vec::new();
        for (status, heading) in
            [(Status::Firing, &self.firing_heading), (Status::Resolved, &self.resolved_heading)]
        {
            let alerts: Vec<String> = payload
                .alerts
                .iter()
                .filter(|a| a.status == status)
                .map(|a| fill(&self.alert, Some(a), payload, tz, 0))
                .collect();
            if alerts.is_empty() {
                continue;
            }
            let heading = fill(heading, None, payload, tz, alerts.len());
            sections.push(Section { heading, alerts });
        }
        if sections.is_empty() {
            sections.push(Section {
                heading: fill(&self.resolved_heading, None, payload, tz, 0),
                alerts: vec!["-".into()],
            });
        }
        Document { sections, footer: None }
    }
}

fn fill(nodes: &[Node], alert: Option<&Alert>, p: &Payload, tz: TzOffset, count: usize) -> String {
    let mut out = String::new();
    for node in nodes {
        match node {
            Node::Text(t) => out.push_str(t),
            Node::If(status, inner) => {
                if alert.is_some_and(|a| a.status == *status) {
                    out.push_str(&fill(inner, alert, p, tz, count));
                }
            }
            Node::Var(Var::Count) => out.push_str(&count.to_string()),
            Node::Var(var) => {
                let Some(a) = alert else { continue };
                let dash = |s: String| if s.is_empty() { "-".to_string() } else { s };
                let text = match var {
                    Var::Label(n) => {
                        escape(a.labels.get(n).or_else(|| p.common_labels.get(n)).unwrap_or(""))
                    }
                    Var::Annotation(n) => escape(
                        a.annotations.get(n).or_else(|| p.common_annotations.get(n)).unwrap_or(""),
                    ),
                    Var::Status => a.status.as_str().to_string(),
                    Var::StartsAt => a.starts_at.map(|t| format_time(t, tz)).unwrap_or_default(),
                    Var::EndsAt => a.ends_at.map(|t| format_time(t, tz)).unwrap_or_default(),
                    Var::GeneratorUrl => {
                        a.generator_url.as_deref().and_then(safe_url).unwrap_or_default()
                    }
                    Var::Fingerprint => escape(&a.fingerprint),
                    Var::Colour => {
                        if a.status == Status::Firing { "warning" } else { "info" }.to_string()
                    }
                    Var::Count => String::new(),
                };
                out.push_str(&dash(text));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alertmanager::parse as parse_payload;

    const TPL: &str = "[firing_heading]\n## 🔥 {{count}} 条告警\n[alert]\n**{{labels.alertname}}** <font color=\"{{colour}}\">{{labels.severity}}</font>\n> {{labels.instance}} {{labels.nope}}\n> {{starts_at}}{{#resolved}} → {{ends_at}}{{/resolved}}\n";

    #[test]
    fn renders_with_escaping_and_conditionals() -> Result<(), String> {
        let t = parse(TPL)?;
        let p = parse_payload(
            br#"{"alerts":[{"status":"firing","labels":{"alertname":"A<@all>","severity":"critical","instance":"h1"},"startsAt":"2024-05-01T12:00:00Z"},
                           {"status":"resolved","labels":{"alertname":"B"},"startsAt":"2024-05-01T12:00:00Z","endsAt":"2024-05-01T13:00:00Z"}]}"#,
        )
        .map_err(|e| e.to_string())?;
        let doc = t.render(&p, TzOffset { seconds: 8 * 3600 });
        assert_eq!(
            doc.to_markdown(),
            "## 🔥 1 条告警\n\n**A＜@all＞** <font color=\"warning\">critical</font>\n> h1 -\n> 2024-05-01 20:00:00\n\n\
             ## <font color=\"info\">恢复通知</font> 共 1 条\n\n**B** <font color=\"info\">-</font>\n> - -\n> 2024-05-01 20:00:00 → 2024-05-01 21:00:00"
        );
        Ok(())
    }

    #[test]
    fn the_shipped_example_parses() -> Result<(), String> {
        load(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("packaging/template.example.txt"),
        )
        .map(|_| ())
    }

    #[test]
    fn errors_are_found_at_load_time_with_the_line() {
        for (text, want) in [
            ("[alert]\n{{lables.x}}", "line 2: unknown placeholder {{lables.x}}"),
            ("[alert]\nok\n{{#resolved}}x", "line 3: a {{#…}} block is never closed"),
            ("[alert]\n{{/firing}}", "line 2: {{/firing}} closes nothing open"),
            ("[alert]\n{{#sometimes}}", "line 2: unknown {{#sometimes}}"),
            ("[alert]\n{{count}}", "line 2: {{count}} is only for headings"),
            ("[firing_heading]\n{{labels.a}}\n[alert]\nx", "line 2: headings know only {{count}}"),
            ("[heading]\nx", "line 1: unknown section [heading]"),
            ("[firing_heading]\nx", "no [alert] section"),
            ("[alert]\n{{labels.x", "line 2: {{ without }}"),
            ("stray\n[alert]\nx", "line 1: text before the first [section]"),
        ] {
            let got = parse(text).expect_err(text);
            assert!(got.starts_with(want), "{text:?}: {got:?} vs {want:?}");
        }
    }
}
