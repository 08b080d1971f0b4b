//! `--config FILE`: named robots and routing, in a small, strict subset of TOML.
//!
//! Written by hand rather than with the `toml` crate (about 150 KB in a 2 MB binary) because
//! the file needs only tables, `key = "string"`, numbers, booleans and one-line arrays of
//! strings. Anything else, and any key we do not know, is an error naming the line, so a typo
//! is caught at start-up, not at 3 a.m.
//!
//! ```toml
//! default_robot = "ops"          # gets whatever no route picks
//! route_label = "wecom_robot"    # a notification whose labels carry this picks the robot
//!
//! [robots.ops]
//! key_file = "/etc/weixin-robot/ops.key"   # or key = "https://…?key=…" / a bare key
//! rate = "20/60s"
//!
//! [robots.dba]
//! key = "…"
//! ```

use std::path::{Path, PathBuf};

/// Who to @-mention: WeCom user ids, mobile numbers, or everyone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MentionEntry {
    pub users: Vec<String>,
    pub mobiles: Vec<String>,
    pub all: bool,
    /// `mention_label`: also mention the user ids a firing alert carries in this label.
    pub user_label: Option<String>,
    /// `mention_mobile_label`: also mention the mobile numbers a firing alert carries in it.
    pub mobile_label: Option<String>,
}

/// One `[robots.NAME]` table, unchecked. `Debug` is written by hand: `key` is a secret.
#[derive(Default, PartialEq, Eq)]
pub struct RobotEntry {
    pub name: String,
    pub key: Option<String>,
    pub key_file: Option<PathBuf>,
    pub rate: Option<String>,
    /// Storm mode's bound for this robot (`--max-delay` when missing).
    pub max_delay: Option<String>,
    pub msgtype: Option<String>,
    pub template: Option<PathBuf>,
    /// Mentioned on every notification with a firing alert.
    pub mention: MentionEntry,
}

impl std::fmt::Debug for RobotEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.debug_struct("RobotEntry")
            .field("name", &self.name)
            .field("key", &self.key.as_ref().map(|_| "***"))
            .field("key_file", &self.key_file)
            .field("rate", &self.rate)
            .field("max_delay", &self.max_delay)
            .field("msgtype", &self.msgtype)
            .field("template", &self.template)
            .field("mention", &self.mention)
            .finish()
    }
}

/// One `[[mentions]]` table: mention these people when a firing alert has `label = value`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MentionRule {
    /// Only for this robot; every robot when `None`.
    pub robot: Option<String>,
    pub label: String,
    pub value: String,
    pub mention: MentionEntry,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct FileConfig {
    pub default_robot: Option<String>,
    pub route_label: Option<String>,
    pub robots: Vec<RobotEntry>,
    pub mentions: Vec<MentionRule>,
}

/// What table the lines being read belong to.
#[derive(Clone, Copy)]
enum Table {
    Top,
    Robot(usize),
    Mention(usize),
}

/// A value: a string, a boolean, or a one-line array of strings.
enum Val {
    Str(String),
    Bool(bool),
    List(Vec<String>),
}

/// Robot names appear in URLs, metrics and logs: keep them plain.
pub fn valid_robot_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

pub fn load(path: &Path) -> Result<FileConfig, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

pub fn parse(text: &str) -> Result<FileConfig, String> {
    let mut out = FileConfig::default();
    let mut table = Table::Top;
    for (n, raw_line) in text.lines().enumerate() {
        let line_no = n + 1;
        let err = |msg: String| format!("line {line_no}: {msg}");
        let line = strip_comment(raw_line).trim();
        if line.is_empty() {
            continue;
        }
        if line == "[[mentions]]" {
            out.mentions.push(MentionRule::default());
            table = Table::Mention(out.mentions.len() - 1);
            continue;
        }
        if let Some(header) = line.strip_prefix('[') {
            let name = header
                .strip_suffix(']')
                .ok_or_else(|| err("a table header must end with ]".into()))?
                .trim();
            let robot = name.strip_prefix("robots.").ok_or_else(|| {
                err(format!("unknown table [{name}]; expected [robots.NAME] or [[mentions]]"))
            })?;
            let robot = robot.trim_matches('"');
            if !valid_robot_name(robot) {
                return Err(err(format!("robot name {robot:?}: use 1-32 of a-z, 0-9, - and _")));
            }
            if out.robots.iter().any(|r| r.name == robot) {
                return Err(err(format!("robot {robot:?} is defined twice")));
            }
            out.robots.push(RobotEntry { name: robot.to_string(), ..RobotEntry::default() });
            table = Table::Robot(out.robots.len() - 1);
            continue;
        }
        let (key, value) =
            line.split_once('=').ok_or_else(|| err("expected key = value".into()))?;
        let key = key.trim();
        let value = parse_value(value.trim()).map_err(&err)?;
        let wrong = |what: &str| err(format!("{key} must be {what}"));
        let string = |v: Val| match v {
            Val::Str(s) => Ok(s),
            _ => Err(wrong("a \"quoted string\"")),
        };
        let list = |v: Val| match v {
            Val::List(l) => Ok(l),
            _ => Err(wrong("an array of strings such as [\"a\", \"b\"]")),
        };
        let boolean = |v: Val| match v {
            Val::Bool(b) => Ok(b),
            _ => Err(wrong("true or false")),
        };
        match (table, key) {
            (Table::Top, "default_robot") => out.default_robot = Some(string(value)?),
            (Table::Top, "route_label") => out.route_label = Some(string(value)?),
            (Table::Robot(i), "key") => out.robots[i].key = Some(string(value)?),
            (Table::Robot(i), "key_file") => {
                out.robots[i].key_file = Some(PathBuf::from(string(value)?))
            }
            (Table::Robot(i), "rate") => out.robots[i].rate = Some(string(value)?),
            (Table::Robot(i), "max_delay") => out.robots[i].max_delay = Some(string(value)?),
            (Table::Robot(i), "msgtype") => out.robots[i].msgtype = Some(string(value)?),
            (Table::Robot(i), "template") => {
                out.robots[i].template = Some(PathBuf::from(string(value)?))
            }
            (Table::Robot(i), "mention_users") => out.robots[i].mention.users = list(value)?,
            (Table::Robot(i), "mention_mobiles") => out.robots[i].mention.mobiles = list(value)?,
            (Table::Robot(i), "mention_all") => out.robots[i].mention.all = boolean(value)?,
            (Table::Robot(i), "mention_label") => {
                out.robots[i].mention.user_label = Some(string(value)?)
            }
            (Table::Robot(i), "mention_mobile_label") => {
                out.robots[i].mention.mobile_label = Some(string(value)?)
            }
            (Table::Mention(i), "robot") => out.mentions[i].robot = Some(string(value)?),
            (Table::Mention(i), "label") => out.mentions[i].label = string(value)?,
            (Table::Mention(i), "value") => out.mentions[i].value = string(value)?,
            (Table::Mention(i), "users") => out.mentions[i].mention.users = list(value)?,
            (Table::Mention(i), "mobiles") => out.mentions[i].mention.mobiles = list(value)?,
            (Table::Mention(i), "all") => out.mentions[i].mention.all = boolean(value)?,
            (Table::Mention(i), "mention_label") => {
                out.mentions[i].mention.user_label = Some(string(value)?)
            }
            (Table::Mention(i), "mention_mobile_label") => {
                out.mentions[i].mention.mobile_label = Some(string(value)?)
            }
            (Table::Top, k) => return Err(err(format!("unknown key {k:?} at the top level"))),
            (Table::Robot(i), k) => {
                return Err(err(format!("unknown key {k:?} in [robots.{}]", out.robots[i].name)))
            }
            (Table::Mention(_), k) => {
                return Err(err(format!("unknown key {k:?} in [[mentions]]")))
            }
        }
    }
    for (i, rule) in out.mentions.iter().enumerate() {
        if rule.label.is_empty() || rule.value.is_empty() {
            return Err(format!("[[mentions]] number {}: needs label and value", i + 1));
        }
    }
    Ok(out)
}

fn parse_value(v: &str) -> Result<Val, String> {
    match v {
        "true" => return Ok(Val::Bool(true)),
        "false" => return Ok(Val::Bool(false)),
        _ => {}
    }
    if let Some(inner) = v.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or("an array must end with ] on the same line")?;
        let mut items = Vec::new();
        for item in split_array(inner)? {
            items.push(string_value(item.trim())?);
        }
        return Ok(Val::List(items));
    }
    string_value(v).map(Val::Str)
}

/// Splits `"a", "b"` at the commas outside strings; a trailing comma is fine.
fn split_array(inner: &str) -> Result<Vec<&str>, String> {
    let mut items = Vec::new();
    let (mut start, mut in_string, mut escaped) = (0, false, false);
    for (i, c) in inner.char_indices() {
        match c {
            '\\' if in_string && !escaped => {
                escaped = true;
                continue;
            }
            '"' if !escaped => in_string = !in_string,
            ',' if !in_string => {
                items.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        escaped = false;
    }
    if in_string {
        return Err("unterminated string in array".into());
    }
    items.push(&inner[start..]);
    Ok(items.into_iter().filter(|s| !s.trim().is_empty()).collect())
}

/// A `#` starts a comment unless it is inside a string.
fn strip_comment(line: &str) -> &str {
    let mut in_string = false;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match c {
            '\\' if in_string => escaped = !escaped,
            '"' if !escaped => in_string = !in_string,
            '#' if !in_string => return &line[..i],
            _ => escaped = false,
        }
        if c != '\\' {
            escaped = false;
        }
    }
    line
}

/// A basic TOML string: `"…"` with `\"`, `\\`, `\n`, `\t` escapes.
fn string_value(v: &str) -> Result<String, String> {
    let inner = v
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .ok_or_else(|| "expected a \"quoted string\"".to_string())?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('"') => out.push('"'),
                Some('\\') => out.push('\\'),
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                _ => return Err("unsupported escape in string".into()),
            },
            '"' => return Err("unescaped \" inside a string".into()),
            c => out.push(c),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_robots_and_routing() -> Result<(), String> {
        let c = parse(
            "# comment\ndefault_robot = \"ops\"\nroute_label = \"team\" # trailing\n\n\
             [robots.ops]\nkey = \"https://h/send?key=a#b\"\nrate = \"5/1s\"\n\
             [robots.\"dba\"]\nkey_file = \"/etc/k\"\nmax_delay = \"30s\"\n",
        )?;
        assert_eq!(c.default_robot.as_deref(), Some("ops"));
        assert_eq!(c.route_label.as_deref(), Some("team"));
        assert_eq!(c.robots.len(), 2);
        assert_eq!(c.robots[0].key.as_deref(), Some("https://h/send?key=a#b"));
        assert_eq!(c.robots[0].rate.as_deref(), Some("5/1s"));
        assert_eq!(c.robots[1].name, "dba");
        assert_eq!(c.robots[1].key_file.as_deref(), Some(Path::new("/etc/k")));
        assert_eq!(c.robots[1].max_delay.as_deref(), Some("30s"));
        Ok(())
    }

    #[test]
    fn debug_hides_the_key() -> Result<(), String> {
        let c = parse("[robots.ops]\nkey = \"https://h/send?key=s3cr3t-entry\"\n")?;
        let shown = format!("{:?}", c.robots);
        assert!(shown.contains("ops") && !shown.contains("s3cr3t"), "{shown}");
        Ok(())
    }

    #[test]
    fn the_shipped_example_parses() -> Result<(), String> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/config.example.toml");
        let c = load(&path)?;
        assert_eq!(c.robots.len(), 2);
        assert_eq!(c.mentions.len(), 1);
        Ok(())
    }

    #[test]
    fn parses_mentions() -> Result<(), String> {
        let c = parse(
            "[robots.ops]\nkey = \"k\"\nmention_users = [\"zhangsan\", \"li,si\",]\nmention_all = true\n\
             [[mentions]]\nlabel = \"severity\"\nvalue = \"critical\"\nmobiles = [\"13800000000\"]\n\
             [[mentions]]\nrobot = \"ops\"\nlabel = \"team\"\nvalue = \"db\"\nusers = []\n",
        )?;
        assert_eq!(c.robots[0].mention.users, ["zhangsan", "li,si"]);
        assert!(c.robots[0].mention.all);
        assert_eq!(c.mentions.len(), 2);
        assert_eq!(c.mentions[0].mention.mobiles, ["13800000000"]);
        assert_eq!(c.mentions[1].robot.as_deref(), Some("ops"));
        assert!(parse("[[mentions]]\nlabel = \"x\"\n").is_err(), "value missing");
        assert!(parse("[robots.a]\nmention_all = \"yes\"\n").is_err());
        assert!(parse("[robots.a]\nmention_users = \"x\"\n").is_err());
        let c = parse(
            "[robots.a]\nmention_label = \"owner\"\nmention_mobile_label = \"owner_mobile\"\n",
        )?;
        assert_eq!(c.robots[0].mention.user_label.as_deref(), Some("owner"));
        assert_eq!(c.robots[0].mention.mobile_label.as_deref(), Some("owner_mobile"));
        Ok(())
    }

    #[test]
    fn errors_name_the_line() {
        for (text, want) in [
            ("[robots.ops]\nkye = \"x\"", "line 2: unknown key \"kye\" in [robots.ops]"),
            ("default = \"x\"", "line 1: unknown key \"default\" at the top level"),
            ("[robot.ops]", "line 1: unknown table [robot.ops]"),
            ("[robots.Ops]", "line 1: robot name \"Ops\""),
            ("[robots.a]\n[robots.a]", "line 2: robot \"a\" is defined twice"),
            ("default_robot = ops", "line 1: expected a \"quoted string\""),
            ("[robots.a", "line 1: a table header must end with ]"),
            ("just words", "line 1: expected key = value"),
        ] {
            let got = parse(text).expect_err(text);
            assert!(got.starts_with(want), "{got:?} vs {want:?}");
        }
    }
}
