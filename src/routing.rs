//! Which robot a notification goes to: the one named in the path (`/alertinfo/{robot}`), else
//! the one named by the routing label (`--config`'s `route_label`, default `wecom_robot`) in
//! the group's labels, else the default robot. Each robot has its own outbox and budget.

use std::sync::{Arc, Mutex};

use crate::alertmanager::{Payload, Status};
use crate::config_file::{MentionEntry, MentionRule};
use crate::outbox::Outbox;

pub struct Robot {
    pub name: String,
    pub outbox: Arc<Outbox>,
    /// Where its sender sends and how fast; a reload updates it in place.
    pub live: crate::outbox::sender::Live,
    /// Mentioned on every notification with a firing alert; a reload updates it in place.
    pub mention: Mutex<MentionEntry>,
    /// The layout, when not the built-in one; a reload updates it in place.
    pub template: Mutex<Option<Arc<crate::template::Template>>>,
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

    /// Who to @-mention for this notification on this robot: the robot's own list plus every
    /// rule (for this robot or all) whose label matches a firing alert. Resolved-only
    /// notifications mention nobody: a recovery should not wake anyone.
    pub fn mentions_for(&self, robot: &Robot, payload: &Payload) -> MentionEntry {
        let firing: Vec<_> = payload.alerts.iter().filter(|a| a.status == Status::Firing).collect();
        if firing.is_empty() {
            return MentionEntry::default();
        }
        let mut out = robot.mention.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for rule in &self.rules {
            if rule.robot.as_ref().is_some_and(|r| r != &robot.name) {
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
            }
        }
        out.users.sort();
        out.users.dedup();
        out.mobiles.sort();
        out.mobiles.dedup();
        out
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
