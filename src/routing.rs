//! Which robot a notification goes to: the one named in the path (`/alertinfo/{robot}`), else
//! the one named by the routing label (`--config`'s `route_label`, default `wecom_robot`) in
//! the group's labels, else the default robot. Each robot has its own outbox and budget.

use std::sync::Arc;

use crate::alertmanager::Payload;
use crate::outbox::Outbox;

pub struct Robot {
    pub name: String,
    pub outbox: Arc<Outbox>,
}

pub struct Robots {
    robots: Vec<Robot>,
    default: usize,
    label: String,
}

impl Robots {
    /// `None` when `default` is not among `robots` (config checks this first).
    pub fn new(robots: Vec<Robot>, default: &str, label: String) -> Option<Robots> {
        let default = robots.iter().position(|r| r.name == default)?;
        Some(Robots { robots, default, label })
    }

    pub fn named(&self, name: &str) -> Option<&Robot> {
        self.robots.iter().find(|r| r.name == name)
    }

    /// The routing label's value from the group labels, the common labels or the first
    /// alert (in that order) picks a robot; an unknown value falls back to the default.
    pub fn pick(&self, payload: &Payload) -> &Robot {
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

    pub fn all(&self) -> &[Robot] {
        &self.robots
    }
}
