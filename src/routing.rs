//! Which robot a notification goes to: the one named in the path (`/alertinfo/{robot}`), else
//! the one named by the routing label (`--config`'s `route_label`, default `wecom_robot`) in
//! the group's labels, else the default robot. Each robot has its own outbox and budget.

use std::sync::{Arc, Mutex};

use crate::alertmanager::{Payload, Status};
use crate::config_file::{MentionEntry, MentionRule};
use crate::outbox::Outbox;
use crate::sort;

pub struct Robot {
    pub name: String,
    pub outbox: Arc<Outbox>,
    /// Where its sender sends and how fast; a reload updates it in place.
    pub live: crate::outbox::sender::Live,
    /// Mentioned on every notification with a firing alert; a reload updates it in place.
    pub mention: Mutex<MentionEntry>,
    /// The layout, when not the built-in one; a reload updates it in place (shared with the
    /// sender, which composes with it at send time).
    pub template: crate::outbox::sender::SharedTemplate,
}

pub struct Robots {
    robots: Vec<Arc<Robot>>,
    default: usize,
    label: String,
    rules: Vec<MentionRule>,
}

impl Robots {
    /// `None` when `default` is not among `robots` (config checks this first).
    pub fn new(
        robots: Vec<Arc<Robot>>,
        default: &str,
        label: String,
        rules: Vec<MentionRule>,
    ) -> Option<Robots> {
        let default = robots.iter().position(|r| r.name == default)?;
        Some(Robots { robots, default, label, rules })
    }

    /// Who to @-mention for this notification on this robot; see [`mentions`].
    pub fn mentions_for(&self, robot: &Robot, payload: &Payload) -> MentionEntry {
        let own = robot.mention.lock().unwrap_or_else(|p| p.into_inner()).clone();
        mentions(&own, &robot.name, &self.rules, payload)
    }

    pub fn named(&self, name: &str) -> Option<&Arc<Robot>> {
        self.robots.iter().find(|r| r.name == name)
    }

    /// The routing label's value from the group labels, the common labels or the first
    /// alert (in that order) picks a robot; an unknown value falls back to the default.
    pub fn pick(&self, payload: &Payload) -> &Arc<Robot> {
        let value = payload
            .group_labels
            .get(&self.label)
            .or_else(|| payload.common_labels.get(&self.label))
            .or_else(|| payload.alerts.first().and_then(|a| a.labels.get(&self.label)));
        match value.and_then(|v| self.named(v)) {
            Some(robot) => robot,
            None => {
                if let Some(v) = value {
                    log::warn!(
                        "no robot named by label, using the default label={} value={v:?}",
                        self.label
                    );
                }
                &self.robots[self.default]
            }
        }
    }

    pub fn all(&self) -> &[Arc<Robot>] {
        &self.robots
    }
}

/// Who to @-mention for a notification on robot `robot_name` with list `own`: that list plus every
/// rule (for this robot or all) whose label matches a firing alert, plus the user ids and
/// mobiles firing alerts carry in the labels named by `mention_label` and
/// `mention_mobile_label`. Resolved-only notifications mention nobody: a recovery should
/// not wake anyone.
///
/// Pure, so the relay and `render --config` share it.
pub fn mentions(
    own: &MentionEntry,
    robot_name: &str,
    rules: &[MentionRule],
    payload: &Payload,
) -> MentionEntry {
    let firing: Vec<_> = payload.alerts.iter().filter(|a| a.status == Status::Firing).collect();
    if firing.is_empty() {
        return MentionEntry::default();
    }
    let mut out = MentionEntry {
        users: own.users.clone(),
        mobiles: own.mobiles.clone(),
        all: own.all,
        ..MentionEntry::default()
    };
    // Where label mentions come from: the robot (every firing alert) and each matching
    // rule (the firing alerts it matches).
    let mut sources: Vec<(&MentionEntry, Option<&MentionRule>)> = vec![(own, None)];
    for rule in rules {
        if rule.robot.as_ref().is_some_and(|r| r != robot_name) {
            continue;
        }
        let matches = firing.iter().any(|a| {
            a.labels.get(&rule.label).or_else(|| payload.common_labels.get(&rule.label))
                == Some(rule.value.as_str())
        });
        if matches {
            out.users.extend(rule.mention.users.iter().cloned());
            out.mobiles.extend(rule.mention.mobiles.iter().cloned());
            out.all |= rule.mention.all;
            sources.push((&rule.mention, Some(rule)));
        }
    }
    let mut from_labels = 0;
    for (source, rule) in sources {
        for (label, valid, list) in [
            (&source.user_label, valid_user_id as fn(&str) -> bool, &mut out.users),
            (&source.mobile_label, valid_mobile, &mut out.mobiles),
        ] {
            let Some(label) = label else { continue };
            for alert in &firing {
                let value_of =
                    |name: &str| alert.labels.get(name).or_else(|| payload.common_labels.get(name));
                if rule.is_some_and(|r| value_of(&r.label) != Some(r.value.as_str())) {
                    continue;
                }
                let value = value_of(label);
                for who in value.unwrap_or("").split([',', ' ', ';']).filter(|w| !w.is_empty()) {
                    if list.iter().any(|w| w == who) {
                        continue;
                    }
                    if !valid(who) {
                        log::warn!("mention label value ignored label={label} value={who:?}");
                    } else if from_labels < MAX_LABEL_MENTIONS {
                        list.push(who.to_string());
                        from_labels += 1;
                    }
                }
            }
        }
    }
    sort::sort(&mut out.users);
    out.users.dedup();
    sort::sort(&mut out.mobiles);
    out.mobiles.dedup();
    out
}

/// At most this many mentions come from alert labels per notification: a group of a hundred
/// alerts each naming an owner must not become a hundred-name ping.
pub const MAX_LABEL_MENTIONS: usize = 20;

/// A WeCom user id as it can come from a label: letters, digits, `_ - . @`, never starting
/// with `@` (so a label cannot say `@all`).
fn valid_user_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && !s.starts_with('@')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@'))
}

/// A mobile number: digits, optionally after `+`, 5 to 20 of them.
fn valid_mobile(s: &str) -> bool {
    let digits = s.strip_prefix('+').unwrap_or(s);
    (5..=20).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_checked_before_they_mention_anyone() {
        for ok in ["zhangsan", "li.si", "wang_wu-2", "a@corp"] {
            assert!(valid_user_id(ok), "{ok}");
        }
        for bad in ["", "@all", "<@all>", "zhang san", "用户", &"x".repeat(65)] {
            assert!(!valid_user_id(bad), "{bad}");
        }
        for ok in ["13800000000", "+8613800000000"] {
            assert!(valid_mobile(ok), "{ok}");
        }
        for bad in ["", "1380", "138-0000-0000", "+", "@all", &"1".repeat(21)] {
            assert!(!valid_mobile(bad), "{bad}");
        }
    }
}
