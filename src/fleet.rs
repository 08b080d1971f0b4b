//! The robots while the relay runs: each one's outbox, spool and sender thread, the routing
//! over them, and reloading `--config` (SIGHUP, `POST /-/reload`).
//!
//! A reload re-reads the config file and key files through the same checks as start-up and
//! builds the new robot set completely before anything changes: a bad file leaves the old set
//! in force. Then, under one write lock, the new routing replaces the old. A robot that stays
//! keeps its outbox and budget history; its key, rate and mentions are updated in place. A new
//! robot gets an outbox and a sender. A removed robot stops taking notifications but keeps
//! delivering what it holds, and is drained on shutdown like the others; added back, it takes
//! that same outbox back (never two outboxes on one spool directory, never a second sender).
//! Only robots, routing and mentions reload; other flags need a restart.
//!
//! At start every robot directory under `--state-dir` is read: one whose robot is not
//! configured is kept ("parked", no sender, logged once, `weixin_robot_unrouted_alerts`) and
//! delivered when a reload or a `?key=` brings the robot back. Idle `?key=` robots (nothing
//! pending) are evicted, least recently used first, when a new key needs a slot.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Instant;

use crate::cli::RawArgs;
use crate::config::Config;
use crate::config_file::MentionEntry;
use crate::metrics;
use crate::outbox::sender::{self, Target};
use crate::outbox::spool::fnv1a64;
use crate::outbox::{spool::Spool, Limits, Outbox};
use crate::robots::RobotConfig;
use crate::routing::{Robot, Robots};
use crate::sort;
use crate::wecom::{self, WebhookUrl};

type Current = Arc<RwLock<Arc<Robots>>>;

pub struct Fleet {
    raw: RawArgs,
    /// What start-up settled; a reload takes its robots and routing from the file anew.
    base: Config,
    current: Current,
    /// Removed by a reload, still delivering what they hold.
    retired: Mutex<Vec<Arc<Robot>>>,
    /// Outboxes found on disk for robots not configured: kept, not sent, until they return.
    parked: Mutex<HashMap<String, Arc<Outbox>>>,
    /// One reload at a time.
    reloading: Mutex<()>,
    /// Robots made for `?key=` (with `--allow-key-param`), with when each was last used.
    adhoc: Mutex<Vec<(Arc<Robot>, Instant)>>,
    /// `--max-key-robots`: at most this many different `?key=` robots at once: each is a
    /// thread and an outbox. Idle ones are evicted to make room.
    max_adhoc: usize,
    /// Built once at start-up (it holds `--ca-file`'s certificates); every robot sends with a
    /// copy.
    client: wecom::Client,
}

impl Fleet {
    pub fn start(config: &Config, raw: RawArgs, client: wecom::Client) -> Result<Fleet, String> {
        let mut parked = park_unconfigured(config)?;
        let mut robots = Vec::new();
        for rc in &config.robots {
            robots.push(make_robot(config, &client, rc, &mut parked)?);
        }
        let routing = routing(config, robots.clone())?;
        let fleet = Fleet {
            raw,
            base: config.clone(),
            current: Arc::new(RwLock::new(Arc::new(routing))),
            retired: Mutex::new(Vec::new()),
            parked: Mutex::new(parked),
            reloading: Mutex::new(()),
            adhoc: Mutex::new(Vec::new()),
            max_adhoc: config.max_key_robots,
            client,
        };
        for robot in &robots {
            fleet.spawn_sender(robot)?;
        }
        Ok(fleet)
    }

    fn spawn_sender(&self, robot: &Arc<Robot>) -> Result<(), String> {
        let weak: Weak<Robot> = Arc::downgrade(robot);
        let current = Arc::clone(&self.current);
        let mentions: sender::Mentions = Arc::new(move |payload| {
            let Some(robot) = weak.upgrade() else { return MentionEntry::default() };
            let robots = Arc::clone(&current.read().unwrap_or_else(|p| p.into_inner()));
            robots.mentions_for(&robot, payload)
        });
        sender::spawn(
            sender::Source {
                outbox: Arc::clone(&robot.outbox),
                live: Arc::clone(&robot.live),
                template: Arc::clone(&robot.template),
                mentions,
            },
            sender::Settings {
                robot: robot.name.clone(),
                retry_initial: self.base.retry_initial,
                retry_max: self.base.retry_max,
                tz: self.base.tz,
                state_dir: self.base.state_dir.as_ref().map(|b| robot_dir(b, &robot.name)),
            },
        )
        .map(|_| ())
        .map_err(|e| format!("starting sender thread: {e}"))
    }

    /// The routing in force (cheap: an `Arc` clone under a read lock).
    pub fn robots(&self) -> Arc<Robots> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Every robot with an outbox and a sender, current and retired (for shutdown, metrics).
    pub fn all(&self) -> Vec<Arc<Robot>> {
        let mut all: Vec<Arc<Robot>> = self.robots().all().to_vec();
        all.extend(self.retired.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned());
        all.extend(
            self.adhoc.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(r, _)| Arc::clone(r)),
        );
        all
    }

    /// Outboxes waiting for their robot to come back (flushed at exit).
    pub fn parked(&self) -> Vec<Arc<Outbox>> {
        self.parked.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    /// Why the relay is not ready, if it is not: an outbox full, a spool that cannot take
    /// writes, a robot without a live sender.
    pub fn not_ready(&self) -> Option<&'static str> {
        let all = self.all();
        if all.iter().any(|r| !r.outbox.spool_healthy()) {
            return Some("spool cannot take writes");
        }
        if all.iter().any(|r| !r.outbox.sender_alive()) {
            return Some("a robot has no live sender");
        }
        if self.robots().all().iter().any(|r| r.outbox.stats().full) {
            return Some("outbox full");
        }
        None
    }

    /// The robot for `?key=`: made on first use with `--rate` and markdown, named after a
    /// hash of the webhook URL (`key-…`) so the key never appears in logs, metrics or the
    /// spool's directory names.
    pub fn adhoc(&self, key: &str) -> Result<Arc<Robot>, String> {
        let (url, name) = adhoc_name(key)?;
        if let Some(robot) = self.configured_with_key(&url) {
            return Ok(robot);
        }
        let mut adhoc = self.adhoc.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((robot, used)) = adhoc.iter_mut().find(|(r, _)| r.name == name) {
            *used = Instant::now();
            return Ok(Arc::clone(robot));
        }
        if adhoc.len() >= self.max_adhoc {
            // Evict the least recently used robot with nothing pending that no request holds.
            let idle = least_used_idle(&adhoc, |r| {
                let stats = r.outbox.stats();
                stats.alerts == 0 && stats.messages == 0
            });
            let Some(i) = idle else {
                return Err(format!(
                    "too many different ?key= robots with messages pending (at most {}, \
                     --max-key-robots)",
                    self.max_adhoc
                ));
            };
            let (evicted, _) = adhoc.swap_remove(i);
            evicted.outbox.close_intake();
            evicted.outbox.stop();
            evicted.outbox.close_spool();
            log::info!("idle ?key= robot evicted robot={}", evicted.name);
        }
        let rc = RobotConfig {
            name,
            webhook: Some(url),
            rate: self.base.rate,
            max_delay: self.base.max_delay,
            msgtype: crate::wecom::MsgType::Markdown,
            template: None,
            mention: Default::default(),
        };
        let robot = {
            let mut parked = self.parked.lock().unwrap_or_else(|p| p.into_inner());
            make_robot(&self.base, &self.client, &rc, &mut parked)?
        };
        metrics::set_unrouted(&robot.name, None);
        self.spawn_sender(&robot)?;
        adhoc.push((Arc::clone(&robot), Instant::now()));
        Ok(robot)
    }

    /// The `?key=` robot if it exists and the list is free right now: no disk work, no
    /// waiting, so a coroutine may call it. `None`: call [`Fleet::adhoc`] on an OS thread.
    pub fn adhoc_ready(&self, key: &str) -> Option<Arc<Robot>> {
        let (url, name) = adhoc_name(key).ok()?;
        if let Some(robot) = self.configured_with_key(&url) {
            return Some(robot);
        }
        let mut adhoc = self.adhoc.try_lock().ok()?;
        let (robot, used) = adhoc.iter_mut().find(|(r, _)| r.name == name)?;
        *used = Instant::now();
        Some(Arc::clone(robot))
    }

    /// The configured robot that sends with the same key as `url`, if any: a `?key=` naming
    /// it must share its outbox and budget, not get a second robot (and a second 20 messages
    /// a minute) on the same WeCom key.
    fn configured_with_key(&self, url: &WebhookUrl) -> Option<Arc<Robot>> {
        self.robots()
            .all()
            .iter()
            .find(|r| {
                let live = r.live.lock().unwrap_or_else(|p| p.into_inner());
                matches!(&live.0, Target::WeCom { url: own, .. } if own.same_key(url))
            })
            .cloned()
    }

    /// Re-reads `--config` and the key files. On error nothing changes.
    pub fn reload(&self) -> Result<String, String> {
        let result = self.try_reload();
        crate::metrics::config_loaded(result.is_ok());
        result
    }

    fn try_reload(&self) -> Result<String, String> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let config = Config::from_raw(&self.raw).map_err(|e| e.to_string())?;
        let old = self.robots();
        let mut robots = Vec::new();
        let mut started = Vec::new();
        let mut returning = Vec::new();
        // Parked outboxes are taken from a copy, and from `parked` itself only once the new
        // set is complete: a reload that fails later leaves them parked.
        let mut parked = self.parked.lock().unwrap_or_else(|p| p.into_inner()).clone();
        {
            let retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
            for rc in &config.robots {
                if let Some(existing) = old.named(&rc.name) {
                    robots.push(Arc::clone(existing));
                } else if let Some(back) = retired.iter().find(|r| r.name == rc.name) {
                    // Still draining: it takes its outbox and sender back.
                    returning.push(Arc::clone(back));
                    robots.push(Arc::clone(back));
                } else {
                    let robot = make_robot(&self.base, &self.client, rc, &mut parked)?;
                    started.push(Arc::clone(&robot));
                    robots.push(robot);
                }
            }
        }
        let new = routing(&config, robots)?;
        // Nothing can fail from here on (but a thread start, which is logged): apply.
        self.parked.lock().unwrap_or_else(|p| p.into_inner()).retain(|n, _| parked.contains_key(n));
        for robot in &started {
            metrics::set_unrouted(&robot.name, None);
        }
        for rc in &config.robots {
            if let Some(robot) = new.named(&rc.name) {
                let live =
                    (target(&self.base, &self.client, rc), rc.rate, rc.msgtype, rc.max_delay);
                *robot.live.lock().unwrap_or_else(|p| p.into_inner()) = live;
                *robot.mention.lock().unwrap_or_else(|p| p.into_inner()) = rc.mention.clone();
                *robot.template.lock().unwrap_or_else(|p| p.into_inner()) = rc.template.clone();
            }
        }
        let removed: Vec<Arc<Robot>> =
            old.all().iter().filter(|r| new.named(&r.name).is_none()).cloned().collect();
        for robot in &removed {
            robot.outbox.close_intake();
        }
        for robot in &returning {
            robot.outbox.reopen_intake();
        }
        {
            let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
            retired.retain(|r| !returning.iter().any(|b| Arc::ptr_eq(b, r)));
            retired.extend(removed.iter().cloned());
        }
        let summary = format!(
            "robots={} added={} removed={} default_robot={} route_label={}",
            new.all().len(),
            started.len() + returning.len(),
            removed.len(),
            config.default_robot,
            config.route_label
        );
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new);
        for robot in &started {
            if let Err(e) = self.spawn_sender(robot) {
                log::error!("{e} robot={}", robot.name);
            }
        }
        Ok(summary)
    }
}

/// The webhook URL of a `?key=` and the robot's name: a hash of the URL, so the key never
/// appears in logs, metrics or directory names.
fn adhoc_name(key: &str) -> Result<(WebhookUrl, String), String> {
    let url = WebhookUrl::parse(key).map_err(|e| format!("?key=: {e}"))?;
    let name = format!("key-{:012x}", fnv1a64(url.expose().as_bytes()) >> 16);
    Ok((url, name))
}

/// The least recently used entry that is idle and held by nothing but the list. Entries are
/// cloned only under the list's lock, so with the lock held a count of 1 means no request is
/// between picking the robot and committing to it: one that is would get 200 from an outbox
/// whose sender was stopped, and its alerts would wait until that `?key=` came back.
fn least_used_idle<T>(list: &[(Arc<T>, Instant)], idle: impl Fn(&T) -> bool) -> Option<usize> {
    list.iter()
        .enumerate()
        .filter(|(_, (r, _))| Arc::strong_count(r) == 1 && idle(r))
        .min_by_key(|(_, (_, used))| *used)
        .map(|(i, _)| i)
}

fn routing(config: &Config, robots: Vec<Arc<Robot>>) -> Result<Robots, String> {
    Robots::new(
        robots,
        &config.default_robot,
        config.route_label.clone(),
        config.mention_rules.clone(),
    )
    .ok_or_else(|| format!("no robot named {:?}", config.default_robot))
}

fn target(config: &Config, client: &wecom::Client, rc: &RobotConfig) -> Target {
    match (&rc.webhook, config.dry_run) {
        (Some(url), false) => {
            if !url.is_https() {
                log::warn!(
                    "webhook URL uses plain http: the key travels unencrypted robot={} url={url}",
                    rc.name
                );
            }
            Target::WeCom { client: client.clone(), url: url.clone() }
        }
        _ => Target::Stdout,
    }
}

/// A robot with its outbox (taken from `parked` when its directory was found at start);
/// its sender is started by the caller once routing is in place.
fn make_robot(
    config: &Config,
    client: &wecom::Client,
    rc: &RobotConfig,
    parked: &mut HashMap<String, Arc<Outbox>>,
) -> Result<Arc<Robot>, String> {
    let live = (target(config, client, rc), rc.rate, rc.msgtype, rc.max_delay);
    let live: sender::Live = Arc::new(Mutex::new(live));
    let outbox = match parked.remove(&rc.name) {
        Some(outbox) => {
            log::info!(
                "robot is configured again, delivering what waited robot={} alerts={}",
                rc.name,
                outbox.stats().alerts
            );
            outbox
        }
        None => Arc::new(open_outbox(config, &rc.name)?),
    };
    let mode = if config.dry_run { " mode=dry-run" } else { "" };
    log::info!(
        "robot ready robot={} msgtype={:?} webhook={} rate={}/{:?}{mode}",
        rc.name,
        rc.msgtype,
        rc.webhook.as_ref().map_or_else(|| "-".to_string(), ToString::to_string),
        rc.rate.messages,
        rc.rate.window
    );
    Ok(Arc::new(Robot {
        name: rc.name.clone(),
        outbox,
        live,
        mention: Mutex::new(rc.mention.clone()),
        template: Arc::new(Mutex::new(rc.template.clone())),
    }))
}

/// The robot named `default` keeps its spool in `--state-dir` itself (where a single-robot
/// relay always kept it); others in `--state-dir/robots/NAME`.
fn robot_dir(base: &Path, robot: &str) -> PathBuf {
    if robot == "default" {
        base.to_path_buf()
    } else {
        base.join("robots").join(robot)
    }
}

/// Opens the outboxes of robot directories whose robot is not configured.
fn park_unconfigured(config: &Config) -> Result<HashMap<String, Arc<Outbox>>, String> {
    let mut parked = HashMap::new();
    let Some(base) = &config.state_dir else { return Ok(parked) };
    let mut names: Vec<String> = Vec::new();
    if base.join("queue").is_dir() {
        names.push("default".into());
    }
    if let Ok(entries) = std::fs::read_dir(base.join("robots")) {
        for e in entries.flatten() {
            if e.path().join("queue").is_dir() {
                if let Some(name) = e.file_name().to_str() {
                    names.push(name.to_string());
                }
            }
        }
    }
    sort::sort(&mut names);
    for name in names {
        if config.robots.iter().any(|r| r.name == name) {
            continue;
        }
        let outbox = open_outbox(config, &name)?;
        let pending = outbox.stats();
        if pending.messages == 0 {
            outbox.close_spool();
            continue;
        }
        // 1.0.0 records hold rendered messages, not alerts: count those as one each.
        let waiting = if pending.alerts > 0 { pending.alerts } else { pending.messages };
        log::warn!(
            "robot {name} is not configured; {waiting} alerts wait in {}",
            robot_dir(base, &name).display()
        );
        metrics::set_unrouted(&name, Some(waiting));
        parked.insert(name, Arc::new(outbox));
    }
    Ok(parked)
}

fn open_outbox(config: &Config, robot: &str) -> Result<Outbox, String> {
    let limits = Limits {
        max_messages: config.queue_max_messages,
        max_bytes: config.queue_max_bytes,
        dedup_window: config.dedup_window,
        max_told: config.dedup_max_entries.max(1),
    };
    let Some(base) = &config.state_dir else {
        return Ok(Outbox::new(limits, None));
    };
    let dir = robot_dir(base, robot);
    let (spool, recovered) =
        Spool::open(&dir, robot).map_err(|e| format!("state dir unusable: {e}"))?;
    if recovered.corrupt > 0 {
        log::error!(
            "spool had corrupt files, moved to corrupt/ robot={robot} count={}",
            recovered.corrupt
        );
    }
    if !recovered.records.is_empty() {
        log::info!(
            "recovered pending notifications from spool robot={robot} count={}",
            recovered.records.len()
        );
    }
    Ok(Outbox::new(limits, Some((spool, recovered.records))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_robot_a_request_holds_is_never_evicted() {
        let t0 = Instant::now();
        let list: Vec<(Arc<u32>, Instant)> =
            (0..3).map(|i| (Arc::new(i), t0 + Duration::from_secs(u64::from(i)))).collect();
        assert_eq!(least_used_idle(&list, |_| true), Some(0));
        // A request picked robot 0 and has not committed yet.
        let held = Arc::clone(&list[0].0);
        assert_eq!(least_used_idle(&list, |_| true), Some(1));
        assert_eq!(least_used_idle(&list, |r| *r != 1), Some(2));
        drop(held);
        assert_eq!(least_used_idle(&list, |_| true), Some(0));
        assert_eq!(least_used_idle(&list, |_| false), None);
    }
}
