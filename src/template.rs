//! User templates: a small subset of mustache that replaces the built-in layout.
//!
//! Why not a template engine crate: the layout needs placeholders, conditions and a per-alert
//! block, and every error must be found when the file loads. A general engine (with loops,
//! filters, includes) adds hundreds of kilobytes and errors that surface at render time.
//!
//! A template file has up to five sections; `[alert]` is required:
//!
//! ```text
//! [firing_heading]
//! ## <font color="warning">🔥 {{count}} 条告警</font>
//! [resolved_heading]
//! ## <font color="info">✅ {{count}} 条恢复</font>
//! [alert]
//! **{{labels.alertname}}** ({{labels.severity}})
//! > 实例: {{labels.instance}}{{#labels.pod}} / {{labels.pod}}{{/labels.pod}}
//! > 负责人: {{labels.team|无人认领}}
//! > 开始: {{starts_at}}{{#resolved}}, 恢复: {{ends_at}} ({{duration}}){{/resolved}}
//! ```
//!
//! Storm mode's compact layout ([`crate::compact`]) uses the built-in look unless the template
//! has a `[compact]` section: rendered once per crowd (alerts of one alertname and status), it
//! knows `{{alertname}}`, `{{status}}`, `{{colour}}`, `{{severity}}` (shared, else a mix such as
//! `critical 3, warning 1`), `{{count}}`, `{{shared_labels}}` and `{{labels.NAME}}` /
//! `{{annotations.NAME}}` for values every alert of the crowd shares. An optional
//! `[compact_line]` is rendered once per alert under it: the `[alert]` placeholders plus
//! `{{differs}}` (the labels not shared, `k=v k=v`), `{{alertname}}` and `{{severity}}`, with
//! `{{starts_at}}` / `{{ends_at}}` as `MM-DD HH:MM:SS`; without it the built-in line is used.
//!
//! The mustache subset, exactly:
//! - `{{NAME}}`: a placeholder (list in the README). Values are always escaped like the
//!   built-in layout's, so label text cannot inject markup; an empty or missing value becomes
//!   `-`, or the text after `|` in `{{NAME|text}}` (`{{NAME|}}` for nothing).
//! - `{{#NAME}}…{{/NAME}}`: a section, kept when NAME is present and not empty (`firing` and
//!   `resolved` test the alert's status). `{{^NAME}}…{{/NAME}}`: an inverted section, kept when
//!   it is not. Sections nest up to [`MAX_DEPTH`] deep. They are conditions only: no lists, no
//!   change of context.
//! - `{{! comment }}` is dropped.
//! - Not supported, each a load-time error saying so: `{{{NAME}}}` and `{{&NAME}}` (unescaped
//!   output), partials `{{> x}}`, delimiter changes `{{=<% %>=}}`, and Go templates
//!   (`{{ .Labels.job }}`, `{{ if }}`, `{{ range }}`, pipes), for which the error shows the
//!   equivalent here.
//!
//! Bounded: the parser keeps an explicit stack and refuses nesting past [`MAX_DEPTH`], so
//! rendering (which recurses once per level) stays far from the end of a coroutine's stack,
//! and files over [`MAX_TEMPLATE_BYTES`] are refused.

use crate::alertmanager::{Alert, Pairs, Payload, Status};
use crate::render::{duration, escape, safe_url, silence_url, truncated_footer, Document, Section};
use crate::time::{format_time, TzOffset};

/// Sections nest at most this deep; rendering recurses once per level.
pub const MAX_DEPTH: usize = 8;

/// A template is a few lines of layout; anything bigger is a mistake (a wrong path).
pub const MAX_TEMPLATE_BYTES: u64 = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Var {
    Label(String),
    Annotation(String),
    GroupLabel(String),
    CommonLabel(String),
    Labels,
    Annotations,
    Status,
    StartsAt,
    EndsAt,
    Duration,
    GeneratorUrl,
    SilenceUrl,
    RunbookUrl,
    Fingerprint,
    Colour,
    ExternalUrl,
    Receiver,
    Tz,
    Count,
    /// Storm mode's compact layout only (see [`Place`]).
    Alertname,
    Severity,
    SharedLabels,
    Differs,
}

impl Var {
    /// Needs an alert: not available in headings.
    fn per_alert(&self) -> bool {
        !matches!(
            self,
            Var::GroupLabel(_)
                | Var::CommonLabel(_)
                | Var::ExternalUrl
                | Var::Receiver
                | Var::Tz
                | Var::Count
        )
    }
}

/// Which section a placeholder sits in: each knows its own set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Heading,
    Alert,
    /// `[compact]`: once per crowd of the compact layout.
    Compact,
    /// `[compact_line]`: once per alert of a crowd.
    CompactLine,
}

impl Place {
    fn of(section: &str) -> Place {
        match section {
            "alert" => Place::Alert,
            "compact" => Place::Compact,
            "compact_line" => Place::CompactLine,
            _ => Place::Heading,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Cond {
    Firing,
    Resolved,
    Present(Var),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Text(String),
    /// A value, with the text shown when it is empty (`-` unless `{{NAME|text}}`).
    Var(Var, String),
    Section {
        cond: Cond,
        inverted: bool,
        body: Vec<Node>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    firing_heading: Vec<Node>,
    resolved_heading: Vec<Node>,
    alert: Vec<Node>,
    compact: Option<Vec<Node>>,
    compact_line: Option<Vec<Node>>,
}

const SECTIONS: &str =
    "[firing_heading], [resolved_heading], [alert], [compact] and [compact_line]";

pub fn load(path: &std::path::Path) -> Result<Template, String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_TEMPLATE_BYTES + 1).read_to_string(&mut text))
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    if text.len() as u64 > MAX_TEMPLATE_BYTES {
        return Err(format!("{}: larger than {MAX_TEMPLATE_BYTES} bytes", path.display()));
    }
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// A line that is a section header: `[name]` with an ASCII name. (`[查看详情]` or
/// `[{{labels.x}}]` on a line of their own are text.)
fn section_header(line: &str) -> Option<&str> {
    let name = line.trim().strip_prefix('[')?.strip_suffix(']')?;
    let plain = !name.trim().is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b' '));
    plain.then(|| name.trim())
}

/// For "unknown section": the section the author most likely meant.
fn suggest_section(name: &str) -> &'static str {
    let lower = name.to_ascii_lowercase();
    if lower.contains("fir") {
        "; did you mean [firing_heading]?"
    } else if lower.contains("resol") || lower.contains("recover") {
        "; did you mean [resolved_heading]?"
    } else if lower.contains("line") {
        "; did you mean [compact_line]?"
    } else if lower.contains("compact") || lower.contains("storm") {
        "; did you mean [compact]?"
    } else if lower.contains("alert") {
        "; did you mean [alert]?"
    } else {
        ""
    }
}

pub fn parse(text: &str) -> Result<Template, String> {
    // Split into sections, remembering where each body starts for error messages. The name is
    // checked here, so a misspelled header is reported as such and not as an error in its body.
    let mut sections: Vec<(&'static str, usize, String)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if let Some(name) = section_header(line) {
            let known = match name {
                "firing_heading" => "firing_heading",
                "resolved_heading" => "resolved_heading",
                "alert" => "alert",
                "compact" => "compact",
                "compact_line" => "compact_line",
                other => {
                    return Err(format!(
                        "line {}: unknown section [{other}]{}; the sections are {SECTIONS}",
                        n + 1,
                        suggest_section(other)
                    ))
                }
            };
            if sections.iter().any(|(s, _, _)| *s == known) {
                return Err(format!("line {}: section [{known}] appears twice", n + 1));
            }
            sections.push((known, n + 2, String::new()));
            continue;
        }
        match sections.last_mut() {
            Some((_, _, body)) => {
                if !body.is_empty() {
                    body.push('\n');
                }
                body.push_str(line);
            }
            None if line.trim().is_empty() => {}
            None => {
                return Err(format!(
                    "line {}: text before the first section; start with {SECTIONS}",
                    n + 1
                ))
            }
        }
    }
    let mut t = Template {
        firing_heading: default_heading("warning", "告警通知"),
        resolved_heading: default_heading("info", "恢复通知"),
        alert: Vec::new(),
        compact: None,
        compact_line: None,
    };
    let mut has_alert = false;
    for (name, first_line, body) in sections {
        let body = body.trim_end_matches('\n');
        let nodes = parse_nodes(body, first_line, Place::of(name))?;
        match name {
            "firing_heading" => t.firing_heading = nodes,
            "resolved_heading" => t.resolved_heading = nodes,
            "compact" => t.compact = Some(nodes),
            "compact_line" => t.compact_line = Some(nodes),
            _ => {
                t.alert = nodes;
                has_alert = true;
            }
        }
    }
    if !has_alert {
        return Err("no [alert] section".into());
    }
    if t.compact_line.is_some() && t.compact.is_none() {
        return Err("[compact_line] without [compact]: add the crowd's head as [compact]".into());
    }
    Ok(t)
}

fn default_heading(colour: &str, title: &str) -> Vec<Node> {
    vec![
        Node::Text(format!("## <font color=\"{colour}\">{title}</font> 共 ")),
        Node::Var(Var::Count, "-".into()),
        Node::Text(" 条".into()),
    ]
}

/// An open section while parsing: what closes it, what it holds, where it opened.
struct Open {
    name: String,
    cond: Option<(Cond, bool)>,
    nodes: Vec<Node>,
    line: usize,
}

impl Open {
    fn sigil(&self) -> char {
        if self.cond.as_ref().is_some_and(|c| c.1) {
            '^'
        } else {
            '#'
        }
    }
}

fn parse_nodes(body: &str, first_line: usize, place: Place) -> Result<Vec<Node>, String> {
    let mut stack =
        vec![Open { name: String::new(), cond: None, nodes: Vec::new(), line: first_line }];
    let mut rest = body;
    let mut line = first_line;
    // True when `rest` starts a line: a section or comment tag alone on its line is
    // "standalone" (mustache's rule) and takes its line with it, so it adds no blank line.
    let mut at_line_start = true;
    while !rest.is_empty() {
        let Some(open) = rest.find("{{") else {
            push_text(&mut stack, rest);
            break;
        };
        let before = &rest[..open];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let indent_only = before[line_start..].trim().is_empty();
        let starts_line = at_line_start || line_start > 0;
        line += before.matches('\n').count();
        let after = &rest[open + 2..];
        let close = after.find("}}").ok_or_else(|| format!("line {line}: {{{{ without }}}}"))?;
        let raw = &after[..close];
        // `{{{x}}}`: the third brace is left after the first `}}`.
        let triple = raw.starts_with('{');
        let mut next = &after[close + 2..];
        if triple {
            next = next.strip_prefix('}').unwrap_or(next);
        }
        let line_end = next.find('\n');
        let alone = starts_line
            && indent_only
            && next[..line_end.unwrap_or(next.len())].trim().is_empty()
            && raw.trim_start().starts_with(['#', '^', '/', '!']);
        if alone {
            push_text(&mut stack, &before[..line_start]);
            next = line_end.map_or("", |i| &next[i + 1..]);
        } else {
            push_text(&mut stack, before);
        }
        line_tag(raw, line, place, triple, &mut stack)?;
        line += raw.matches('\n').count();
        if alone && line_end.is_some() {
            line += 1;
        }
        at_line_start = alone;
        rest = next;
    }
    if let Some(open) = stack.get(1..).and_then(<[Open]>::last) {
        return Err(format!(
            "line {}: section {{{{{}{}}}}} is never closed",
            open.line,
            open.sigil(),
            open.name
        ));
    }
    Ok(stack.pop().map(|s| s.nodes).unwrap_or_default())
}

/// Handles one `{{…}}` tag.
fn line_tag(
    raw: &str,
    line: usize,
    place: Place,
    triple: bool,
    stack: &mut Vec<Open>,
) -> Result<(), String> {
    let tag = raw.trim();
    let shown = format!("{{{{{raw}}}}}{}", if triple { "}" } else { "" });
    if tag.starts_with('!') {
        return Ok(());
    }
    if let Some(hint) = go_template_hint(raw) {
        return Err(format!(
            "line {line}: {shown}: this is not a Go template (Alertmanager's syntax); {hint}"
        ));
    }
    if triple || tag.starts_with('&') {
        let name = tag.trim_start_matches(['{', '&']).trim();
        return Err(format!(
            "line {line}: {shown}: unescaped output is not supported (values are always \
             escaped so labels cannot inject markup); write {{{{{name}}}}}"
        ));
    }
    if tag.starts_with('>') {
        return Err(format!(
            "line {line}: {shown}: partials are not supported; one file is one template"
        ));
    }
    if tag.starts_with('=') {
        return Err(format!("line {line}: {shown}: changing delimiters is not supported"));
    }
    if let Some(name) = tag.strip_prefix('#').or_else(|| tag.strip_prefix('^')) {
        let inverted = tag.starts_with('^');
        let name = name.trim();
        let cond = condition(name, line, place)?;
        if stack.len() > MAX_DEPTH {
            return Err(format!("line {line}: sections nest deeper than {MAX_DEPTH}"));
        }
        stack.push(Open {
            name: name.to_string(),
            cond: Some((cond, inverted)),
            nodes: Vec::new(),
            line,
        });
        return Ok(());
    }
    if let Some(name) = tag.strip_prefix('/') {
        let name = name.trim();
        let top = stack.pop();
        return match top {
            Some(Open { name: open, cond: Some((cond, inverted)), nodes, .. }) if open == name => {
                if let Some(parent) = stack.last_mut() {
                    parent.nodes.push(Node::Section { cond, inverted, body: nodes });
                }
                Ok(())
            }
            Some(open @ Open { cond: Some(_), .. }) => Err(format!(
                "line {line}: {{{{/{name}}}}} does not close {{{{{}{}}}}} opened on line {}",
                open.sigil(),
                open.name,
                open.line
            )),
            _ => Err(format!("line {line}: {{{{/{name}}}}} closes nothing open")),
        };
    }
    let (name, default) = match tag.split_once('|') {
        Some((name, default)) => (name.trim(), default.trim().to_string()),
        None => (tag, "-".to_string()),
    };
    let var = variable(name).ok_or_else(|| format!("line {line}: unknown placeholder {shown}"))?;
    check_place(&var, name, line, place)?;
    if let Some(top) = stack.last_mut() {
        top.nodes.push(Node::Var(var, default));
    }
    Ok(())
}

/// Headings know `{{count}}` and the notification's values; alerts know all but `{{count}}`;
/// the compact sections know their own sets (see the module doc).
fn check_place(var: &Var, name: &str, line: usize, place: Place) -> Result<(), String> {
    let compact_only =
        matches!(var, Var::Alertname | Var::Severity | Var::SharedLabels | Var::Differs);
    match place {
        Place::Compact => {
            let known = matches!(
                var,
                Var::Alertname
                    | Var::Status
                    | Var::Colour
                    | Var::Severity
                    | Var::Count
                    | Var::SharedLabels
                    | Var::Label(_)
                    | Var::Annotation(_)
                    | Var::Tz
            );
            if !known {
                return Err(format!(
                    "line {line}: {{{{{name}}}}} is not known in [compact], which is rendered \
                     once per crowd; it knows {{{{alertname}}}}, {{{{status}}}}, {{{{colour}}}}, \
                     {{{{severity}}}}, {{{{count}}}}, {{{{shared_labels}}}}, {{{{tz}}}}, and \
                     labels.NAME / annotations.NAME shared by the crowd"
                ));
            }
            return Ok(());
        }
        Place::CompactLine => {
            if matches!(var, Var::Count | Var::SharedLabels) {
                return Err(format!(
                    "line {line}: {{{{{name}}}}} belongs to the crowd: write it in [compact]"
                ));
            }
            return Ok(());
        }
        Place::Heading | Place::Alert if compact_only => {
            return Err(format!(
                "line {line}: {{{{{name}}}}} is only for [compact] and [compact_line]"
            ));
        }
        _ => {}
    }
    let heading = place == Place::Heading;
    if *var == Var::Count && !heading {
        return Err(format!("line {line}: {{{{count}}}} is only for headings"));
    }
    if heading && var.per_alert() {
        return Err(format!(
            "line {line}: {{{{{name}}}}} belongs to one alert; headings know {{{{count}}}}, \
             {{{{receiver}}}}, {{{{external_url}}}}, {{{{tz}}}}, group_labels.NAME and \
             common_labels.NAME"
        ));
    }
    Ok(())
}

fn condition(name: &str, line: usize, place: Place) -> Result<Cond, String> {
    match name {
        "firing" => return Ok(Cond::Firing),
        "resolved" => return Ok(Cond::Resolved),
        _ => {}
    }
    // Handlebars' `{{#if x}}`, `{{#unless x}}`, `{{#each x}}`: the name is what they test.
    let helper = ["if ", "unless ", "with ", "each "].iter().find_map(|h| name.strip_prefix(h));
    if let Some(inner) = helper.map(str::trim).filter(|n| variable(n).is_some()) {
        let sigil = if name.starts_with("unless") { '^' } else { '#' };
        return Err(format!(
            "line {line}: {{{{#{name}}}}} is handlebars; here write {{{{{sigil}{inner}}}}}…{{{{/{inner}}}}}"
        ));
    }
    let var = variable(name).ok_or_else(|| {
        format!(
            "line {line}: unknown section name {{{{#{name}}}}}; use firing, resolved or a \
             placeholder such as labels.pod"
        )
    })?;
    if var == Var::Count {
        return Err(format!("line {line}: {{{{#count}}}} is always true; leave it out"));
    }
    check_place(&var, name, line, place)?;
    Ok(Cond::Present(var))
}

fn push_text(stack: &mut [Open], text: &str) {
    if !text.is_empty() {
        if let Some(top) = stack.last_mut() {
            top.nodes.push(Node::Text(text.to_string()));
        }
    }
}

fn variable(tag: &str) -> Option<Var> {
    let valid_name =
        |n: &str| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    for (prefix, make) in [
        ("labels.", Var::Label as fn(String) -> Var),
        ("annotations.", Var::Annotation),
        ("group_labels.", Var::GroupLabel),
        ("common_labels.", Var::CommonLabel),
    ] {
        if let Some(name) = tag.strip_prefix(prefix) {
            return valid_name(name).then(|| make(name.to_string()));
        }
    }
    Some(match tag {
        "labels" => Var::Labels,
        "annotations" => Var::Annotations,
        "status" => Var::Status,
        "starts_at" => Var::StartsAt,
        "ends_at" => Var::EndsAt,
        "duration" => Var::Duration,
        "generator_url" => Var::GeneratorUrl,
        "silence_url" => Var::SilenceUrl,
        "runbook_url" => Var::RunbookUrl,
        "fingerprint" => Var::Fingerprint,
        "colour" | "color" => Var::Colour,
        "external_url" => Var::ExternalUrl,
        "receiver" => Var::Receiver,
        "tz" => Var::Tz,
        "count" => Var::Count,
        "alertname" => Var::Alertname,
        "severity" => Var::Severity,
        "shared_labels" => Var::SharedLabels,
        "differs" => Var::Differs,
        _ => return None,
    })
}

/// Go's template keywords and the functions Alertmanager and Prometheus templates use most.
const GO_WORDS: &[&str] = &[
    "if",
    "else",
    "end",
    "range",
    "with",
    "define",
    "template",
    "block",
    "len",
    "index",
    "printf",
    "print",
    "println",
    "and",
    "or",
    "not",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "call",
    "html",
    "js",
    "urlquery",
    "slice",
    "toUpper",
    "toLower",
    "upper",
    "lower",
    "title",
    "trimSpace",
    "join",
    "match",
    "reReplaceAll",
    "safeHtml",
    "stringSlice",
    "humanize",
    "humanizeDuration",
    "humanizePercentage",
    "stripPort",
    "date",
    "tz",
    "default",
    "quote",
    "trim",
    "trunc",
];

/// `Some(what to write instead)` when a tag is Go template syntax rather than ours.
fn go_template_hint(raw: &str) -> Option<String> {
    // `{{- x -}}` trims white space in Go.
    let trimmed = raw.strip_prefix("- ").is_some() || raw.strip_suffix(" -").is_some();
    let tag = raw.trim().trim_start_matches("- ").trim_end_matches(" -").trim();
    if tag.starts_with("/*") {
        return Some("comments here are {{! … }}".into());
    }
    let (head, pipe) = match tag.split_once('|') {
        Some((h, p)) => (h.trim(), Some(p.trim())),
        None => (tag, None),
    };
    let first = head.split_whitespace().next().unwrap_or("");
    let rest = head[first.len()..].trim();
    let go_field = |s: &str| s.starts_with('.') || s.starts_with('$');
    let pipe_is_go = pipe.is_some_and(|p| {
        let word = p.split_whitespace().next().unwrap_or("");
        GO_WORDS.contains(&word) || go_field(p)
    });
    let is_go = trimmed
        || go_field(first)
        || (GO_WORDS.contains(&first) && (first == "else" || first == "end" || !rest.is_empty()))
        || (pipe.is_some() && go_field(head))
        || pipe_is_go;
    if !is_go {
        return None;
    }
    let hint = match first {
        "if" | "with" => match condition_equivalent(rest) {
            Some(c) if c == "firing" || c == "resolved" => {
                format!("here write {{{{#{c}}}}}…{{{{/{c}}}}}")
            }
            Some(c) => format!(
                "here write {{{{#{c}}}}}…{{{{/{c}}}}} (kept when it is present and not empty), \
                 and {{{{^{c}}}}}…{{{{/{c}}}}} for the else branch"
            ),
            None => "here a section {{#NAME}}…{{/NAME}} keeps its text when NAME (firing, \
                     resolved or a placeholder such as labels.pod) is present and not empty"
                .to_string(),
        },
        "else" => "here write the else branch as an inverted section {{^NAME}}…{{/NAME}}".into(),
        "end" => "here a section ends with {{/NAME}}, naming what {{#NAME}} opened".into(),
        "range" if rest.contains("Labels") || rest.contains("Annotations") => {
            let what = if rest.contains("Annotations") { "annotations" } else { "labels" };
            format!("there are no loops here; {{{{{what}}}}} lists them all as k=v, …")
        }
        "range" => "there are no loops here; the [alert] section is rendered once per alert, \
                    firing and resolved alerts under their own heading"
            .into(),
        "define" | "template" | "block" => {
            "there are no named templates here; one file is one template".into()
        }
        _ => {
            let here = field_equivalent(head)
                .map(|f| format!("here write {{{{{f}}}}}"))
                .unwrap_or_else(|| "see the placeholders in the README".into());
            if pipe.is_some() {
                format!(
                    "{here}; there are no functions or filters (values are inserted escaped, as \
                     they are; {{{{NAME|text}}}} gives a default)"
                )
            } else {
                here
            }
        }
    };
    Some(hint)
}

/// `.Labels.job`, `$labels.job`, `index .Labels "job"` … → our placeholder name.
fn field_equivalent(expr: &str) -> Option<String> {
    let expr = expr.trim().trim_start_matches('(').trim_end_matches(')').trim();
    if let Some(rest) = expr.strip_prefix("index ") {
        let mut parts = rest.split_whitespace();
        let map = field_equivalent(parts.next()?)?;
        let key = parts.next()?.trim_matches('"');
        return Some(format!("{map}.{key}"));
    }
    let path = expr.strip_prefix('.').or_else(|| expr.strip_prefix('$'))?;
    let (head, name) = match path.split_once('.') {
        Some((h, n)) => (h, Some(n)),
        None => (path, None),
    };
    let map = match head {
        "Labels" | "labels" => "labels",
        "Annotations" | "annotations" | "CommonAnnotations" => "annotations",
        "CommonLabels" => "common_labels",
        "GroupLabels" => "group_labels",
        "ExternalURL" if name.is_none() => return Some("external_url".into()),
        "Receiver" if name.is_none() => return Some("receiver".into()),
        "Status" if name.is_none() => return Some("status".into()),
        "StartsAt" if name.is_none() => return Some("starts_at".into()),
        "EndsAt" if name.is_none() => return Some("ends_at".into()),
        "GeneratorURL" if name.is_none() => return Some("generator_url".into()),
        "Fingerprint" if name.is_none() => return Some("fingerprint".into()),
        _ => return None,
    };
    Some(match name {
        Some(n) if n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') => {
            format!("{map}.{n}")
        }
        Some(_) => return None,
        None => map.to_string(),
    })
}

/// The condition of `if`: `eq .Status "firing"` → `firing`, `.Labels.pod` → `labels.pod`.
fn condition_equivalent(expr: &str) -> Option<String> {
    let expr = expr.trim();
    if let Some(rest) = expr.strip_prefix("eq ") {
        if rest.contains(".Status") {
            if rest.contains("\"firing\"") {
                return Some("firing".into());
            }
            if rest.contains("\"resolved\"") {
                return Some("resolved".into());
            }
        }
        return None;
    }
    field_equivalent(expr).filter(|f| f.contains('.'))
}

/// What a rendering needs besides the nodes.
struct Ctx<'a> {
    alert: Option<&'a Alert>,
    payload: &'a Payload,
    tz: TzOffset,
    /// The section's status in headings, the alert's in `[alert]`.
    status: Status,
    count: usize,
    /// In the compact sections: the crowd, and the alert's differing labels (escaped).
    crowd: Option<&'a Crowd<'a>>,
    differs: &'a str,
}

/// One crowd of storm mode's compact layout (alerts of one alertname and status), as the
/// `[compact]` and `[compact_line]` sections see it. Values are raw; shown escaped.
pub struct Crowd<'a> {
    pub status: Status,
    pub alertname: &'a str,
    /// The shared severity, else the mix (`critical 3, warning 1`).
    pub severity: &'a str,
    pub count: usize,
    /// Labels (alertname and severity left out) and annotations every alert shares.
    pub shared_labels: &'a [(String, String)],
    pub shared_annotations: &'a [(String, String)],
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
                .map(|a| {
                    let ctx = Ctx::of(Some(a), payload, tz, status, 0);
                    fill(&self.alert, &ctx)
                })
                .collect();
            if alerts.is_empty() {
                continue;
            }
            let ctx = Ctx::of(None, payload, tz, status, alerts.len());
            sections.push(Section { heading: fill(heading, &ctx), alerts });
        }
        if sections.is_empty() {
            let ctx = Ctx::of(None, payload, tz, payload.status, 0);
            sections.push(Section {
                heading: fill(&self.resolved_heading, &ctx),
                alerts: vec!["-".into()],
            });
        }
        Document { sections, footer: truncated_footer(payload) }
    }

    /// True when the template renders storm mode's compact layout itself (`[compact]`).
    pub fn has_compact(&self) -> bool {
        self.compact.is_some()
    }

    /// A crowd's head in the `[compact]` layout (`None` without the section). `group` is the
    /// group of the crowd's first alert (for `{{tz}}` and the like).
    pub fn compact_head(&self, crowd: &Crowd, group: &Payload, tz: TzOffset) -> Option<String> {
        let nodes = self.compact.as_ref()?;
        let mut ctx = Ctx::of(None, group, tz, crowd.status, crowd.count);
        ctx.crowd = Some(crowd);
        Some(fill(nodes, &ctx))
    }

    /// One alert's line under its crowd (`None` without `[compact_line]`: the built-in line).
    /// `differs` is the alert's labels the crowd does not share, escaped, `k=v k=v`.
    pub fn compact_line(
        &self,
        crowd: &Crowd,
        alert: &Alert,
        group: &Payload,
        differs: &str,
        tz: TzOffset,
    ) -> Option<String> {
        let nodes = self.compact_line.as_ref()?;
        let mut ctx = Ctx::of(Some(alert), group, tz, alert.status, crowd.count);
        ctx.crowd = Some(crowd);
        ctx.differs = differs;
        Some(fill(nodes, &ctx))
    }
}

impl<'a> Ctx<'a> {
    fn of(
        alert: Option<&'a Alert>,
        payload: &'a Payload,
        tz: TzOffset,
        status: Status,
        count: usize,
    ) -> Ctx<'a> {
        Ctx { alert, payload, tz, status, count, crowd: None, differs: "" }
    }
}

/// Recurses once per section level, at most [`MAX_DEPTH`] deep (checked by the parser).
fn fill(nodes: &[Node], ctx: &Ctx) -> String {
    let mut out = String::new();
    for node in nodes {
        match node {
            Node::Text(t) => out.push_str(t),
            Node::Section { cond, inverted, body } => {
                let holds = match cond {
                    Cond::Firing => ctx.status == Status::Firing,
                    Cond::Resolved => ctx.status == Status::Resolved,
                    Cond::Present(var) => !value(var, ctx).is_empty(),
                };
                if holds != *inverted {
                    out.push_str(&fill(body, ctx));
                }
            }
            Node::Var(var, default) => {
                let text = value(var, ctx);
                out.push_str(if text.is_empty() { default } else { &text });
            }
        }
    }
    out
}

/// A placeholder's text, escaped (URLs made safe instead); empty when missing.
fn value(var: &Var, ctx: &Ctx) -> String {
    let p = ctx.payload;
    let all = |pairs: &Pairs| {
        pairs
            .0
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| format!("{}={}", escape(k), escape(v)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match var {
        Var::GroupLabel(n) => return escape(p.group_labels.get(n).unwrap_or("")),
        Var::CommonLabel(n) => return escape(p.common_labels.get(n).unwrap_or("")),
        Var::ExternalUrl => {
            return p.external_url.as_deref().and_then(safe_url).unwrap_or_default()
        }
        Var::Receiver => return escape(&p.receiver),
        Var::Tz => return ctx.tz.to_string(),
        Var::Count => return ctx.count.to_string(),
        Var::Differs => return ctx.differs.to_string(),
        _ => {}
    }
    if let (Some(crowd), None) = (ctx.crowd, ctx.alert) {
        // `[compact]`: the crowd's values; a label or annotation only when all share it.
        let shared = |pairs: &[(String, String)], n: &str| {
            pairs.iter().find(|(k, _)| k == n).map(|(_, v)| escape(v)).unwrap_or_default()
        };
        return match var {
            Var::Alertname => escape(crowd.alertname),
            Var::Severity => escape(crowd.severity),
            Var::Status => crowd.status.as_str().to_string(),
            Var::Colour => colour(crowd.status).to_string(),
            Var::SharedLabels => crowd
                .shared_labels
                .iter()
                .filter(|(k, v)| k != "alertname" && k != "severity" && !v.is_empty())
                .map(|(k, v)| format!("{}={}", escape(k), escape(v)))
                .collect::<Vec<_>>()
                .join(", "),
            Var::Label(n) if n == "alertname" => escape(crowd.alertname),
            Var::Label(n) => shared(crowd.shared_labels, n),
            Var::Annotation(n) => shared(crowd.shared_annotations, n),
            _ => String::new(),
        };
    }
    let Some(a) = ctx.alert else { return String::new() };
    // `[compact_line]`: times without the year, which every line would repeat.
    let time = |t: Option<crate::time::Timestamp>| {
        let full = t.map(|t| format_time(t, ctx.tz)).unwrap_or_default();
        match ctx.crowd {
            Some(_) => full.get(5..).unwrap_or(&full).to_string(),
            None => full,
        }
    };
    match var {
        Var::Label(n) => escape(a.labels.get(n).or_else(|| p.common_labels.get(n)).unwrap_or("")),
        Var::Annotation(n) => {
            escape(a.annotations.get(n).or_else(|| p.common_annotations.get(n)).unwrap_or(""))
        }
        Var::Labels => all(&a.labels),
        Var::Annotations => all(&a.annotations),
        Var::Status => a.status.as_str().to_string(),
        Var::StartsAt => time(a.starts_at),
        Var::EndsAt => time(a.ends_at),
        Var::Duration => duration(a).unwrap_or_default(),
        Var::GeneratorUrl => a.generator_url.as_deref().and_then(safe_url).unwrap_or_default(),
        Var::SilenceUrl => silence_url(a, p).unwrap_or_default(),
        Var::RunbookUrl => a
            .annotations
            .get("runbook_url")
            .or_else(|| p.common_annotations.get("runbook_url"))
            .and_then(safe_url)
            .unwrap_or_default(),
        Var::Fingerprint => escape(&a.fingerprint),
        Var::Colour => colour(a.status).to_string(),
        Var::Alertname => escape(
            a.labels.get("alertname").or_else(|| p.common_labels.get("alertname")).unwrap_or(""),
        ),
        Var::Severity => escape(
            a.labels.get("severity").or_else(|| p.common_labels.get("severity")).unwrap_or(""),
        ),
        Var::GroupLabel(_)
        | Var::CommonLabel(_)
        | Var::ExternalUrl
        | Var::Receiver
        | Var::Tz
        | Var::Count
        | Var::SharedLabels
        | Var::Differs => String::new(),
    }
}

fn colour(status: Status) -> &'static str {
    match status {
        Status::Firing => "warning",
        Status::Resolved => "info",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alertmanager::parse as parse_payload;

    const TPL: &str = "[firing_heading]\n## 🔥 {{count}} 条告警\n[alert]\n**{{labels.alertname}}** <font color=\"{{colour}}\">{{labels.severity}}</font>\n> {{labels.instance}} {{labels.nope}}\n> {{starts_at}}{{#resolved}} → {{ends_at}}{{/resolved}}\n";

    const CST: TzOffset = TzOffset { seconds: 8 * 3600 };

    fn payload(body: &str) -> Result<Payload, String> {
        parse_payload(body.as_bytes()).map_err(|e| e.to_string())
    }

    #[test]
    fn renders_with_escaping_and_conditionals() -> Result<(), String> {
        let t = parse(TPL)?;
        let p = payload(
            r#"{"alerts":[{"status":"firing","labels":{"alertname":"A<@all>","severity":"critical","instance":"h1"},"startsAt":"2024-05-01T12:00:00Z"},
                           {"status":"resolved","labels":{"alertname":"B"},"startsAt":"2024-05-01T12:00:00Z","endsAt":"2024-05-01T13:00:00Z"}]}"#,
        )?;
        let doc = t.render(&p, CST);
        assert_eq!(
            doc.to_markdown(),
            "## 🔥 1 条告警\n\n**A＜@all＞** <font color=\"warning\">critical</font>\n> h1 -\n> 2024-05-01 20:00:00\n\n\
             ## <font color=\"info\">恢复通知</font> 共 1 条\n\n**B** <font color=\"info\">-</font>\n> - -\n> 2024-05-01 20:00:00 → 2024-05-01 21:00:00"
        );
        Ok(())
    }

    #[test]
    fn sections_on_values_inverted_and_defaults() -> Result<(), String> {
        let t = parse(
            "[firing_heading]\n{{receiver}} {{group_labels.namespace}} {{#common_labels.team}}T{{/common_labels.team}}{{^common_labels.team}}no team{{/common_labels.team}} {{count}}\n\
             [alert]\n{{labels.alertname}}{{#labels.pod}} pod={{labels.pod}}{{/labels.pod}}{{^labels.pod}} no pod{{/labels.pod}} \
             team={{labels.team|无人认领}} x={{labels.x|}}. {{! a comment }}{{#firing}}F{{^labels.pod}}!{{/labels.pod}}{{/firing}}{{^firing}}R {{duration}}{{/firing}}\n\
             [{{labels}}] [{{annotations}}] {{silence_url}} {{runbook_url|no runbook}} {{external_url}} {{tz}}",
        )?;
        let p = payload(
            r#"{"receiver":"wecom","externalURL":"http://am:9093","groupLabels":{"namespace":"shop"},
                "alerts":[{"labels":{"alertname":"A","pod":"p-1"},"annotations":{"runbook_url":"https://r/a"}},
                          {"status":"resolved","labels":{"alertname":"B","team":"db<>"},"annotations":{"summary":"s"},
                           "startsAt":"2024-05-01T12:00:00Z","endsAt":"2024-05-01T13:05:00Z"}]}"#,
        )?;
        let doc = t.render(&p, CST);
        assert_eq!(doc.sections[0].heading, "wecom shop no team 1");
        assert_eq!(
            doc.sections[0].alerts[0],
            "A pod=p-1 team=无人认领 x=. F\n[alertname=A, pod=p-1] [runbook_url=https://r/a] \
             http://am:9093/#/silences/new?filter=%7Balertname%3D%22A%22%2Cpod%3D%22p-1%22%7D https://r/a http://am:9093 +08:00"
        );
        assert_eq!(
            doc.sections[1].alerts[0],
            "B no pod team=db＜＞ x=. R 1小时5分\n[alertname=B, team=db＜＞] [summary=s] \
             http://am:9093/#/silences/new?filter=%7Balertname%3D%22B%22%2Cteam%3D%22db%3C%3E%22%7D no runbook http://am:9093 +08:00"
        );
        Ok(())
    }

    #[test]
    fn section_tags_alone_on_a_line_take_the_line_with_them() -> Result<(), String> {
        let t = parse("[alert]\n{{! note }}\nA\n  {{#labels.pod}}\npod {{labels.pod}}\n{{/labels.pod}}\nB {{#firing}}f{{/firing}}\n{{labels.x}}")?;
        let p = payload(r#"{"alerts":[{"labels":{"pod":"p"}},{"labels":{}}]}"#)?;
        let doc = t.render(&p, CST);
        assert_eq!(doc.sections[0].alerts, ["A\npod p\nB f\n-", "A\nB f\n-"]);
        // Line numbers still count the lines taken.
        let err = parse("[alert]\n{{#firing}}\n{{/firing}}\n{{nope}}").expect_err("nope");
        assert!(err.starts_with("line 4: unknown placeholder"), "{err}");
        Ok(())
    }

    #[test]
    fn a_truncated_group_gets_the_same_last_line() -> Result<(), String> {
        let t = parse("[alert]\n{{labels.alertname}}")?;
        let p = payload(r#"{"truncatedAlerts":17,"alerts":[{"labels":{"alertname":"A"}}]}"#)?;
        let md = t.render(&p, CST).to_markdown();
        assert!(md.ends_with("另有 17 条告警被 Alertmanager 截断未列出</font>"), "{md}");
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

    /// The templates the READMEs show are real: each parses.
    #[test]
    fn the_readme_examples_parse() -> Result<(), String> {
        for file in ["README.md", "README.zh-CN.md"] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
            let text = std::fs::read_to_string(&path).map_err(|e| format!("{file}: {e}"))?;
            let blocks: Vec<&str> = text
                .split("```text\n")
                .skip(1)
                .filter_map(|b| b.split("```").next())
                .filter(|b| b.contains("[alert]"))
                .collect();
            assert!(!blocks.is_empty(), "{file} shows no template");
            for block in blocks {
                parse(block).map_err(|e| format!("{file}: {e}\n{block}"))?;
            }
        }
        Ok(())
    }

    #[test]
    fn errors_are_found_at_load_time_with_the_line() {
        for (text, want) in [
            ("[alert]\n{{lables.x}}", "line 2: unknown placeholder {{lables.x}}"),
            ("[alert]\nok\n{{#resolved}}x", "line 3: section {{#resolved}} is never closed"),
            ("[alert]\n{{/firing}}", "line 2: {{/firing}} closes nothing open"),
            ("[alert]\n{{#sometimes}}", "line 2: unknown section name {{#sometimes}}"),
            (
                "[alert]\n{{#if labels.pod}}x{{/if}}",
                "line 2: {{#if labels.pod}} is handlebars; here write {{#labels.pod}}…{{/labels.pod}}",
            ),
            (
                "[alert]\n{{#unless labels.pod}}x{{/unless}}",
                "line 2: {{#unless labels.pod}} is handlebars; here write {{^labels.pod}}…{{/labels.pod}}",
            ),
            (
                "[alert]\n{{#labels.a}}\n{{/labels.b}}",
                "line 3: {{/labels.b}} does not close {{#labels.a}} opened on line 2",
            ),
            ("[alert]\n{{count}}", "line 2: {{count}} is only for headings"),
            (
                "[firing_heading]\n{{labels.a}}\n[alert]\nx",
                "line 2: {{labels.a}} belongs to one alert",
            ),
            ("[heading]\nx", "line 1: unknown section [heading]; the sections are"),
            ("[alerts]\n{{labels.x}}", "line 1: unknown section [alerts]; did you mean [alert]?"),
            ("[Firing]\nx", "line 1: unknown section [Firing]; did you mean [firing_heading]?"),
            ("[alert]\nx\n[alert]\ny", "line 3: section [alert] appears twice"),
            ("[firing_heading]\nx", "no [alert] section"),
            ("[alert]\n{{labels.x", "line 2: {{ without }}"),
            ("stray\n[alert]\nx", "line 1: text before the first section"),
            (
                "[alert]\n{{{labels.x}}}",
                "line 2: {{{labels.x}}}: unescaped output is not supported",
            ),
            ("[alert]\n{{&labels.x}}", "line 2: {{&labels.x}}: unescaped output is not supported"),
            ("[alert]\n{{> other}}", "line 2: {{> other}}: partials are not supported"),
            ("[alert]\n{{=<% %>=}}", "line 2: {{=<% %>=}}: changing delimiters is not supported"),
        ] {
            let got = parse(text).expect_err(text);
            assert!(got.starts_with(want), "{text:?}: {got:?} vs {want:?}");
        }
    }

    #[test]
    fn go_templates_get_the_equivalent_here() {
        for (tag, want) in [
            ("{{ .Labels.job }}", "here write {{labels.job}}"),
            ("{{ $labels.instance }}", "here write {{labels.instance}}"),
            ("{{ .CommonLabels.team }}", "here write {{common_labels.team}}"),
            ("{{ .ExternalURL }}", "here write {{external_url}}"),
            ("{{ index .Labels \"pod\" }}", "here write {{labels.pod}}"),
            ("{{- .Annotations.summary -}}", "here write {{annotations.summary}}"),
            ("{{ if .Labels.pod }}", "here write {{#labels.pod}}…{{/labels.pod}}"),
            ("{{ if eq .Status \"firing\" }}", "here write {{#firing}}…{{/firing}}"),
            ("{{ else }}", "inverted section {{^NAME}}…{{/NAME}}"),
            ("{{ end }}", "ends with {{/NAME}}"),
            ("{{ range .Alerts }}", "rendered once per alert"),
            ("{{ range .Labels.SortedPairs }}", "{{labels}} lists them all"),
            ("{{ .Labels.job | toUpper }}", "here write {{labels.job}}; there are no functions"),
            ("{{ x | upper }}", "there are no functions or filters"),
            ("{{ template \"wechat.default.message\" . }}", "no named templates"),
            ("{{/* a Go comment */}}", "comments here are {{! … }}"),
        ] {
            let got = parse(&format!("[alert]\n{tag}")).expect_err(tag);
            assert!(
                got.starts_with(&format!("line 2: {tag}: this is not a Go template"))
                    && got.contains(want),
                "{tag}: {got}"
            );
        }
        // Our own syntax is never mistaken for Go's.
        assert!(parse("[alert]\n{{! a note, not Go -}}").is_ok());
        assert!(parse(
            "[alert]\n{{labels.team|-}} {{labels.a | n/a}} {{#labels.end}}x{{/labels.end}}"
        )
        .is_ok());
    }

    #[test]
    fn compact_sections_know_their_placeholders() -> Result<(), String> {
        let t = parse(
            "[alert]\nx\n[compact]\n{{#firing}}🔥{{/firing}}{{alertname}} {{status}} <font color=\"{{colour}}\">{{severity}}</font> ×{{count}} [{{shared_labels}}] {{labels.job}} {{annotations.summary|无摘要}} {{labels.instance|各不相同}} {{tz}}\n\
             [compact_line]\n{{differs}} {{alertname}}/{{severity}} {{starts_at}} {{fingerprint}} {{labels.instance}}",
        )?;
        assert!(t.has_compact());
        let p = payload(
            r#"{"alerts":[{"labels":{"alertname":"A<b>","severity":"critical","job":"node","instance":"h1"},"startsAt":"2024-05-01T12:00:00Z","fingerprint":"f1"}]}"#,
        )?;
        let shared =
            vec![("job".to_string(), "node".to_string()), ("severity".into(), "critical".into())];
        let crowd = Crowd {
            status: Status::Firing,
            alertname: "A<b>",
            severity: "critical",
            count: 2,
            shared_labels: &shared,
            shared_annotations: &[],
        };
        assert_eq!(
            t.compact_head(&crowd, &p, CST).as_deref(),
            Some("🔥A＜b＞ firing <font color=\"warning\">critical</font> ×2 [job=node] node 无摘要 各不相同 +08:00")
        );
        assert_eq!(
            t.compact_line(&crowd, &p.alerts[0], &p, "instance=h1", CST).as_deref(),
            Some("instance=h1 A＜b＞/critical 05-01 20:00:00 f1 h1")
        );
        // Without the sections: None, the built-in look is used.
        let plain = parse("[alert]\nx")?;
        assert!(!plain.has_compact() && plain.compact_head(&crowd, &p, CST).is_none());
        for (text, want) in [
            (
                "[alert]\nx\n[compact]\n{{starts_at}}",
                "line 4: {{starts_at}} is not known in [compact]",
            ),
            (
                "[alert]\nx\n[compact]\n{{#generator_url}}x{{/generator_url}}",
                "is not known in [compact]",
            ),
            (
                "[alert]\nx\n[compact]\nx\n[compact_line]\n{{count}}",
                "line 6: {{count}} belongs to the crowd",
            ),
            (
                "[alert]\n{{differs}}",
                "line 2: {{differs}} is only for [compact] and [compact_line]",
            ),
            (
                "[firing_heading]\n{{alertname}}\n[alert]\nx",
                "only for [compact] and [compact_line]",
            ),
            ("[alert]\nx\n[compact_line]\n{{differs}}", "[compact_line] without [compact]"),
            ("[alert]\nx\n[compacts]\nx", "did you mean [compact]?"),
        ] {
            let err = parse(text).err().unwrap_or_default();
            assert!(err.contains(want), "{text:?}: {err}");
        }
        Ok(())
    }

    #[test]
    fn nesting_is_bounded() {
        let nest =
            |n: usize| format!("[alert]\n{}x{}", "{{#firing}}".repeat(n), "{{/firing}}".repeat(n));
        assert!(parse(&nest(MAX_DEPTH)).is_ok());
        let err = parse(&nest(MAX_DEPTH + 1)).expect_err("too deep");
        assert!(err.contains("nest deeper than 8"), "{err}");
        // A hostile file (100k open sections) fails fast, without recursion.
        assert!(parse(&nest(100_000)).is_err());
    }
}
