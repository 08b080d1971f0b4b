//! The robots while the relay runs: each one's outbox, spool and sender thread, the routing
//! over them, and reloading `--config` (SIGHUP, `POST /-/reload`).
//!
//! A reload re-reads the config file and key files through the same checks as start-up and
//! builds the new robot set completely before anything changes: a bad file leaves the old set
//! in force. Then, under one write lock, the new routing replaces the old. A robot that stays
//! keeps its outbox and budget history; its key, rate and mentions are updated in place. A new
//! robot gets an outbox and a sender. A removed robot stops taking notifications but keeps
//! delivering what it holds, and is drained on shutdown like the others. Only robots, routing
//! and mentions reload; other flags need a restart.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use crate::cli::RawArgs;
use crate::config::Config;
use crate::outbox::sender::{self, Target};
use crate::outbox::spool::fnv1a64;
use crate::outbox::{spool::Spool, Limits, Outbox};
use crate::robots::RobotConfig;
use crate::routing::{Robot, Robots};
use crate::wecom::{self, WebhookUrl};

pub struct Fleet {
    raw: RawArgs,
    /// What start-up settled; a reload takes its robots and routing from the file anew.
    base: Config,
    current: RwLock<Arc<Robots>>,
    /// Removed by a reload, still delivering what they hold.
    retired: Mutex<Vec<Arc<Robot>>>,
    /// One reload at a time.
    reloading: Mutex<()>,
    /// Robots made for `?key=` (with `--allow-key-param`), by name.
    adhoc: Mutex<Vec<Arc<Robot>>>,
    /// Built once at start-up (it holds `--ca-file`'s certificates); every robot sends with a
    /// copy.
    client: wecom::Client,
}

/// At most this many different `?key=` robots: each is a thread and an outbox.
const MAX_ADHOC_ROBOTS: usize = 32;

impl Fleet {
    pub fn start(config: &Config, raw: RawArgs, client: wecom::Client) -> Result<Fleet, String> {
        let mut robots = Vec::new();
        for rc in &config.robots {
            robots.push(Arc::new(start_robot(config, &client, rc)?));
        }
        let robots = routing(config, robots)?;
        Ok(Fleet {
            raw,
            base: config.clone(),
            current: RwLock::new(Arc::new(robots)),
            retired: Mutex::new(Vec::new()),
            reloading: Mutex::new(()),
            adhoc: Mutex::new(Vec::new()),
            client,
        })
    }

    /// The routing in force (cheap: an `Arc` clone under a read lock).
    pub fn robots(&self) -> Arc<Robots> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Every robot with an outbox, current and retired (for shutdown and metrics).
    pub fn all(&self) -> Vec<Arc<Robot>> {
        let mut all: Vec<Arc<Robot>> = self.robots().all().to_vec();
        all.extend(self.retired.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned());
        all.extend(self.adhoc.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned());
        all
    }

    /// The robot for `?key=`: made on first use with `--rate` and markdown, named after a
    /// hash of the webhook URL (`key-…`) so the key never appears in logs, metrics or the
    /// spool's directory names.
    pub fn adhoc(&self, key: &str) -> Result<Arc<Robot>, String> {
        let url = WebhookUrl::parse(key).map_err(|e| format!("?key=: {e}"))?;
        let name = format!("key-{:012x}", fnv1a64(url.expose().as_bytes()) >> 16);
        let mut adhoc = self.adhoc.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(robot) = adhoc.iter().find(|r| r.name == name) {
            return Ok(Arc::clone(robot));
        }
        if adhoc.len() >= MAX_ADHOC_ROBOTS {
            return Err(format!("too many different ?key= robots (at most {MAX_ADHOC_ROBOTS})"));
        }
        let rc = RobotConfig {
            name,
            webhook: Some(url),
            rate: self.base.rate,
            msgtype: crate::wecom::MsgType::Markdown,
            template: None,
            mention: Default::default(),
        };
        let robot = Arc::new(start_robot(&self.base, &self.client, &rc)?);
        adhoc.push(Arc::clone(&robot));
        Ok(robot)
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
        for rc in &config.robots {
            match old.named(&rc.name) {
                Some(existing) => robots.push(Arc::clone(existing)),
                None => {
                    let robot = Arc::new(start_robot(&self.base, &self.client, rc)?);
                    started.push(Arc::clone(&robot));
                    robots.push(robot);
                }
            }
        }
        let new = routing(&config, robots)?;
        // Nothing can fail from here on: apply.
        for rc in &config.robots {
            if let Some(robot) = new.named(&rc.name) {
                let live = (target(&self.base, &self.client, rc), rc.rate, rc.msgtype);
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
        self.retired.lock().unwrap_or_else(|p| p.into_inner()).extend(removed.iter().cloned());
        let summary = format!(
            "robots={} added={} removed={} default_robot={} route_label={}",
            new.all().len(),
            started.len(),
            removed.len(),
            config.default_robot,
            config.route_label
        );
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new);
        Ok(summary)
    }
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

fn start_robot(config: &Config, client: &wecom::Client, rc: &RobotConfig) -> Result<Robot, String> {
    let live = (target(config, client, rc), rc.rate, rc.msgtype);
    let live: sender::Live = Arc::new(Mutex::new(live));
    let outbox = Arc::new(open_outbox(config, &rc.name)?);
    sender::spawn(
        Arc::clone(&outbox),
        Arc::clone(&live),
        sender::Settings {
            robot: rc.name.clone(),
            retry_initial: config.retry_initial,
            retry_max: config.retry_max,
        },
    )
    .map_err(|e| format!("starting sender thread: {e}"))?;
    log::info!(
        "robot ready robot={} msgtype={:?} webhook={} rate={}/{:?}",
        rc.name,
        rc.msgtype,
        rc.webhook.as_ref().map_or_else(|| "-".to_string(), ToString::to_string),
        rc.rate.messages,
        rc.rate.window
    );
    Ok(Robot {
        name: rc.name.clone(),
        outbox,
        live,
        mention: Mutex::new(rc.mention.clone()),
        template: Mutex::new(rc.template.clone()),
    })
}

/// The robot named `default` keeps its spool in `--state-dir` itself (where a single-robot
/// relay always kept it); others in `--state-dir/robots/NAME`.
fn open_outbox(config: &Config, robot: &str) -> Result<Outbox, String> {
    let limits = Limits {
        max_messages: config.queue_max_messages,
        max_bytes: config.queue_max_bytes,
        dedup_window: config.dedup_window,
    };
    let Some(base) = &config.state_dir else {
        return Ok(Outbox::new(limits, None));
    };
    let dir: PathBuf =
        if robot == "default" { base.clone() } else { base.join("robots").join(robot) };
    let (spool, recovered) = Spool::open(&dir).map_err(|e| e.to_string())?;
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
