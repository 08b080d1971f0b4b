//! The robot set: `default` from `--key`/`--key-file` plus every `[robots.NAME]` of `--config`
//! (parsed by [`crate::config_file`]), each with its key, rate, msgtype, template and mentions,
//! checked when it loads.

use std::path::Path;
use std::time::Duration;

use crate::cli::Error;
use crate::config_file;
use crate::values::{parse_duration, Rate};
use crate::wecom::WebhookUrl;

/// One robot: where its messages go and how fast.
#[derive(Clone, Debug)]
pub struct RobotConfig {
    pub name: String,
    /// `None` only with `--dry-run` (or for commands that send nothing).
    pub webhook: Option<WebhookUrl>,
    pub rate: Rate,
    /// Storm mode: the longest a change may wait before the group sees it (`--max-delay`, or
    /// `max_delay` in the robot's table). `render --digest` picks the layout from it.
    pub max_delay: Duration,
    pub msgtype: crate::wecom::MsgType,
    /// Replaces the built-in layout; checked when the file loads.
    pub template: Option<std::sync::Arc<crate::template::Template>>,
    /// Mentioned on every notification with a firing alert.
    pub mention: config_file::MentionEntry,
}

/// A key file's key: the first line that is not blank or a `#` comment (so a packaged
/// placeholder can explain itself); empty when there is none, which the URL check reports.
pub fn read_key_file(path: &Path) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    let key = text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#'));
    Ok(key.unwrap_or("").to_string())
}

/// How [`robots`] treats the robots' keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keys {
    /// Serving or sending: every robot needs one.
    Required,
    /// `--dry-run`: read them when given, none needed.
    Optional,
    /// `render`: never read (so rendering needs no access to secrets).
    Skip,
}

/// The robots: `default` from --key (if given), plus every `[robots.NAME]` of the file.
pub fn robots(
    file: Option<&Path>,
    cli_webhook: Option<&WebhookUrl>,
    cli_rate: Rate,
    cli_max_delay: Duration,
    keys: Keys,
) -> Result<RobotSetup, Error> {
    let mut robots = Vec::new();
    if file.is_none() || cli_webhook.is_some() {
        robots.push(RobotConfig {
            name: "default".into(),
            webhook: cli_webhook.cloned(),
            rate: cli_rate,
            max_delay: cli_max_delay,
            msgtype: crate::wecom::MsgType::Markdown,
            template: None,
            mention: config_file::MentionEntry::default(),
        });
    }
    let Some(path) = file else {
        return Ok((robots, "default".into(), DEFAULT_ROUTE_LABEL.into(), Vec::new()));
    };
    let bad = |reason: String| Error::Invalid { flag: "--config", reason };
    let parsed = config_file::load(path).map_err(bad)?;
    for entry in parsed.robots {
        let where_ = format!("{}: [robots.{}]", path.display(), entry.name);
        if robots.iter().any(|r| r.name == entry.name) {
            return Err(bad(format!("{where_}: also given by --key (named default)")));
        }
        let key_text = match (&entry.key, &entry.key_file) {
            (Some(_), Some(_)) => {
                return Err(bad(format!("{where_}: give key or key_file, not both")))
            }
            _ if keys == Keys::Skip => None,
            (Some(k), None) => Some(k.clone()),
            (None, Some(p)) => Some(read_key_file(p).map_err(|e| {
                bad(format!(
                    "{where_}: reading {}: {e}{}",
                    p.display(),
                    crate::cli::who_must_read(&e)
                ))
            })?),
            (None, None) if keys == Keys::Optional => None,
            (None, None) => return Err(bad(format!("{where_}: needs key or key_file"))),
        };
        let webhook = key_text
            .map(|t| WebhookUrl::parse(&t).map_err(|r| bad(format!("{where_}: key: {r}"))))
            .transpose()?;
        let rate = match &entry.rate {
            Some(r) => Rate::parse(r).map_err(|e| bad(format!("{where_}: rate: {e}")))?,
            None => cli_rate,
        };
        let max_delay = match &entry.max_delay {
            Some(d) => parse_duration(d).ok().filter(|d| !d.is_zero()).ok_or_else(|| {
                bad(format!("{where_}: max_delay: expected a duration above zero such as 2m"))
            })?,
            None => cli_max_delay,
        };
        let msgtype = match &entry.msgtype {
            Some(m) => {
                crate::wecom::MsgType::parse(m).map_err(|e| bad(format!("{where_}: {e}")))?
            }
            None => crate::wecom::MsgType::Markdown,
        };
        let template = match &entry.template {
            Some(p) => Some(std::sync::Arc::new(
                crate::template::load(p).map_err(|e| bad(format!("{where_}: template {e}")))?,
            )),
            None => None,
        };
        robots.push(RobotConfig {
            name: entry.name,
            webhook,
            rate,
            max_delay,
            msgtype,
            template,
            mention: entry.mention,
        });
    }
    if robots.is_empty() {
        return Err(bad(format!("{}: defines no robots", path.display())));
    }
    let default_robot = match parsed.default_robot {
        Some(name) if robots.iter().any(|r| r.name == name) => name,
        Some(name) => {
            return Err(bad(format!("{}: default_robot {name:?} is not defined", path.display())))
        }
        None if robots.len() == 1 => robots[0].name.clone(),
        None if robots.iter().any(|r| r.name == "default") => "default".into(),
        None => return Err(bad(format!("{}: several robots: set default_robot", path.display()))),
    };
    let route_label = parsed.route_label.unwrap_or_else(|| DEFAULT_ROUTE_LABEL.into());
    for rule in &parsed.mentions {
        if let Some(name) = &rule.robot {
            if !robots.iter().any(|r| &r.name == name) {
                return Err(bad(format!(
                    "{}: [[mentions]] names robot {name:?}, which is not defined",
                    path.display()
                )));
            }
        }
    }
    Ok((robots, default_robot, route_label, parsed.mentions))
}

/// Robots, the default robot, the routing label and the mention rules.
pub type RobotSetup = (Vec<RobotConfig>, String, String, Vec<config_file::MentionRule>);

/// The label that routes a notification when the config file names no other.
pub const DEFAULT_ROUTE_LABEL: &str = "wecom_robot";
