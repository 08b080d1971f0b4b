//! The sender thread: the only code that calls [`crate::wecom`].
//!
//! Once the limiter and any backoff allow, it takes a snapshot of what is pending, composes the
//! next messages from it with the robot's current settings ([`super::compose`]), sends them one
//! by one within the budget and settles each by the error's class: delivered → those alert
//! states leave the outbox; `Retry` → exponential backoff with jitter, then composed again;
//! `RateLimited` (45009) → this robot pauses until its window has passed; `Permanent` → a
//! message of several groups or alerts is retried in smaller pieces, and only a one-alert
//! message is given up (logged with a hint, counted per alert, kept in `failed/`). Every
//! attempt spends budget, as WeCom counts failed calls too.
//!
//! Storm mode: before composing, when the budget left until the oldest pending change is
//! `max_delay` old does not fit the full layout, everything pending goes in the compact layout
//! ([`crate::compact`]) if that fits, else as one digest message and the full list as a file
//! ([`crate::digest`]), settled only once the file message is accepted; a failed upload falls
//! back to compact messages, only as many as the window allows now (`fallback_goes_on`), and
//! the next round decides again: with the file path once its back-off has passed. Each step
//! of a digest is recorded ([`super::inflight`]; on disk with `--state-dir`, else in memory),
//! so after a failed send (and, with `--state-dir`, a crash) it goes on, before anything is
//! decided afresh, with the same uploaded file, and a file already sent is not sent again.
//!
//! Pacing: a round (a snapshot composed into messages) starts by [`Limiter::next_round`], which
//! holds it while a burst is still arriving instead of spending the window on near-empty
//! messages; the messages of a round go by the sliding log alone.
//!
//! A failure is logged when it starts or changes, not on every retry.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::alertmanager::Payload;
use crate::compact;
use crate::config_file::MentionEntry;
use crate::digest;
use crate::metrics;
use crate::outbox::compose::{compose, mention_all, Composed, Message, Style};
use crate::outbox::inflight::{self, Inflight, Stage};
use crate::outbox::limiter::Limiter;
use crate::outbox::queue::{Cover, GroupSnap, Outcome, Snapshot};
use crate::outbox::split;
use crate::outbox::Outbox;
use crate::render;
use crate::render::{Document, Section};
use crate::template::Template;
use crate::time::Timestamp;
use crate::time::TzOffset;
use crate::values::Rate;
use crate::wecom::{self, Class, MsgType, SendError, WebhookUrl};

/// Where messages go: WeCom, or stdout for `--dry-run`.
#[derive(Clone)]
pub enum Target {
    WeCom { client: wecom::Client, url: WebhookUrl },
    Stdout,
}

pub struct Settings {
    pub robot: String,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub tz: TzOffset,
    /// The robot's directory under `--state-dir`: where a digest in flight is recorded.
    pub state_dir: Option<std::path::PathBuf>,
}

/// Where a robot sends and how fast: shared with the config reload, which swaps it while the
/// sender runs. Read once per message.
/// The last field is storm mode's `max_delay`.
pub type Live = Arc<Mutex<(Target, Rate, MsgType, Duration)>>;

/// Exponential backoff with "equal jitter": half fixed, half random, so a fleet of relays
/// that failed together does not retry together.
struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let exp = self.initial.saturating_mul(1u32 << self.attempt.min(20)).min(self.max);
        self.attempt += 1;
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let half = exp / 2;
        let half_nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(self.rng % half_nanos.saturating_add(1))
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Who to @-mention for a group, from the routing in force when the message is composed.
pub type Mentions = Arc<dyn Fn(&Payload) -> MentionEntry + Send + Sync>;

/// The robot's template (`None`: the built-in layout); a reload swaps it.
pub type SharedTemplate = Arc<Mutex<Option<Arc<Template>>>>;

/// What the sender reads from its robot at every message.
#[derive(Clone)]
pub struct Source {
    pub outbox: Arc<Outbox>,
    pub live: Live,
    pub template: SharedTemplate,
    pub mentions: Mentions,
}

/// Spawns the sender as an OS thread (attohttpc blocks; coroutines must not), supervised: a
/// panic is logged, counted, and the loop restarts after a backoff (1 s doubling to 60 s);
/// while it is down the outbox says so and `/-/ready` answers 503.
pub fn spawn(robot: Source, settings: Settings) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name(format!("sender-{}", settings.robot)).spawn(move || {
        let mut pause = Duration::from_secs(1);
        loop {
            robot.outbox.set_sender_alive(true);
            let run_once = std::panic::AssertUnwindSafe(|| run(&robot, &settings));
            match std::panic::catch_unwind(run_once) {
                Ok(()) => return,
                Err(_) => {
                    robot.outbox.set_sender_alive(false);
                    metrics::sender_restarted(&settings.robot);
                    log::error!(
                        "sender panicked, restarting robot={} restart_in_ms={}",
                        settings.robot,
                        pause.as_millis()
                    );
                    if !robot.outbox.pause_until(Instant::now() + pause) {
                        robot.outbox.set_sender_alive(true);
                        return;
                    }
                    pause = (pause * 2).min(Duration::from_secs(60));
                }
            }
        }
    })
}

fn current(live: &Live) -> (Target, Rate, MsgType, Duration) {
    live.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

fn run(robot: &Source, settings: &Settings) {
    let outbox = &robot.outbox;
    let live = &robot.live;
    let seed = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(1);
    let mut backoff = Backoff {
        initial: settings.retry_initial,
        max: settings.retry_max,
        attempt: 0,
        rng: (u64::from(seed) << 32 | u64::from(std::process::id())) | 1,
    };
    let (_, mut rate, _, _) = current(live);
    // Storm mode's file path is closed until then after an upload failed.
    let mut file_path_closed_until = Instant::now();
    let mut upload_failing: Option<String> = None;
    let mut file_backoff = Backoff {
        initial: settings.retry_initial,
        max: settings.retry_max,
        attempt: 0,
        rng: (u64::from(seed) << 16 | u64::from(std::process::id())) | 1,
    };
    let limiter = RefCell::new(Limiter::new(rate));
    let mut hold_until = Instant::now();
    let mut failing: Option<String> = None;
    let name = settings.robot.as_str();
    // Without `--state-dir` the record lives in memory: a retried digest still reuses its
    // media id and does not send its digest message again.
    let journal = match settings.state_dir.as_deref() {
        Some(dir) => inflight::Store::new(dir),
        None => inflight::Store::in_memory(),
    };
    // A digest in flight (uploaded, maybe its digest message sent) goes on before anything
    // else is decided, so the group is not told its states twice; see `resume_first`.
    let mut digest_in_flight = false;
    // The last digest's file name: a later one in the same minute gets a distinct name.
    let mut last_file_name: Option<String> = journal.load(name).map(|r| r.file_name);
    // A file sent just before a crash: what it told, replayed from the spool, is not sent again.
    if let Some(record) = journal.load(name) {
        digest_in_flight = record.stage < Stage::FileSent;
        let (_, _, _, max_delay) = current(live);
        let max_age = inflight::max_age(max_delay);
        let cover = inflight::told(&record, &outbox.snapshot_all(), unix_now(), max_age);
        if !cover.alerts.is_empty() {
            log::info!(
                "digest file was sent before the restart, not sending it again robot={name} file={} alerts={}",
                record.file_name,
                cover.alerts.len()
            );
            outbox.settle(&cover, Outcome::Delivered);
        }
    }

    loop {
        let not_before = |hold: Instant| {
            let now = Instant::now();
            limiter.borrow_mut().next_allowed(now).max(hold)
        };
        // A round starts by the limiter's pacing rule (a burst arriving waits for its paced
        // slot or a pause in arrivals); the parts of a round by the sliding log alone.
        let round_not_before = |burst: Option<Instant>| {
            let now = Instant::now();
            limiter.borrow_mut().next_round(now, burst).max(hold_until)
        };
        let Some(snapshot) = outbox.next(round_not_before) else {
            return;
        };
        // Debug builds only: lets the tests check supervision (one panic per process).
        #[cfg(debug_assertions)]
        {
            use std::sync::atomic::{AtomicBool, Ordering};
            static PANICKED: AtomicBool = AtomicBool::new(false);
            let wanted = std::env::var_os("WEIXIN_ROBOT_DEBUG_SENDER_PANIC");
            if wanted.is_some_and(|v| v == name) && !PANICKED.swap(true, Ordering::Relaxed) {
                panic!("deliberate sender panic (WEIXIN_ROBOT_DEBUG_SENDER_PANIC)");
            }
        }
        // Read again: a reload may have changed the key, budget, type or template meanwhile.
        let (target, new_rate, msgtype, max_delay) = current(live);
        if new_rate != rate {
            rate = new_rate;
            limiter.borrow_mut().set_rate(rate);
        }
        // Storm mode: when what is pending cannot reach the group within max-delay even in
        // the compact layout, one digest message and the full list as a file tell it all.
        // When compact fits (or the file path is closed), everything pending in the compact
        // layout, each message settling exactly the alerts it shows.
        // A compact round, and whether it is the fallback for a closed file path.
        let mut compact_groups: Option<(Vec<GroupSnap>, bool)> = None;
        if matches!(snapshot, Snapshot::Groups(_)) {
            let recent = limiter.borrow_mut().recent(Instant::now());
            let file_open = Instant::now() >= file_path_closed_until;
            let template = robot.template.lock().map(|t| t.clone()).unwrap_or_default();
            let look = (msgtype, settings.tz, template.as_deref());
            // A digest in flight whose states are all still pending is finished first (with
            // its media id): deciding afresh could tell a group compact or full messages
            // after it has seen the digest of the same states.
            let max_age = inflight::max_age(max_delay);
            let resume = digest_in_flight
                && journal.load(name).is_some_and(|r| {
                    inflight::resume(&r, &outbox.snapshot_all(), unix_now(), max_age).is_some()
                });
            if digest_in_flight && !resume {
                // Not going on with it (a covered state changed or was told another way, or
                // the record is too old): a record left behind could later be taken up for
                // the same states repeated by Alertmanager, with only its old file message.
                log::info!("digest in flight dropped, deciding afresh robot={name}");
                if let Err(e) = journal.clear() {
                    log::warn!("digest record not removed robot={name} error=\"{e}\"");
                }
            }
            digest_in_flight = resume;
            let plan = if resume {
                Some(Storm::Digest(outbox.snapshot_all()))
            } else {
                storm(outbox, rate, &recent, max_delay, look, file_open)
            };
            // A digest says the list is in the attached file: it goes only when the window
            // holds both messages, so the file never trails it by a window.
            if matches!(plan, Some(Storm::Digest(_))) {
                let now = Instant::now();
                let free = limiter.borrow_mut().free_at(2, now);
                if free > now {
                    hold_until = hold_until.max(free);
                    continue;
                }
            }
            if let Some(Storm::Compact(groups, fallback)) = plan {
                compact_groups = Some((groups, fallback));
            } else if let Some(Storm::Digest(groups)) = plan {
                let mut send = |body: &str| {
                    let (result, _, finished) = send_once(&target, body, name, &limiter);
                    match &result {
                        Ok(()) => metrics::inc_sent(name),
                        Err(e) => metrics::inc_failed(name, e),
                    }
                    (result, finished)
                };
                // Before each send of the round: the live rate (a reload may have lowered it
                // during the upload), then the budget at that rate.
                let wait_budget = || {
                    let (_, live_rate, _, _) = current(live);
                    limiter.borrow_mut().set_rate(live_rate);
                    outbox.pause_until(not_before(hold_until))
                };
                match send_digest(
                    &groups,
                    &target,
                    msgtype,
                    settings.tz,
                    name,
                    &mut send,
                    &wait_budget,
                    &journal,
                    resume.then_some(max_age),
                    &mut last_file_name,
                ) {
                    DigestEnd::Delivered(groups, cover) => {
                        digest_in_flight = false;
                        outbox.settle(&cover, Outcome::Delivered);
                        if let Some(previous) = upload_failing.take() {
                            log::info!("file upload recovered robot={name} after=\"{previous}\"");
                        }
                        // Whom the digested groups would have mentioned, once, within the budget.
                        let payloads: Vec<Payload> =
                            groups.iter().map(|g| g.payload.clone()).collect();
                        let who = mention_all(&payloads, &|p: &Payload| (robot.mentions)(p));
                        if let Some(m) = who {
                            if !outbox.pause_until(not_before(hold_until)) {
                                return;
                            }
                            if let (Err(e), _) = send(&m.message.body()) {
                                log::warn!(
                                    "mention after a digest not sent robot={name} {}",
                                    summarize(&e)
                                );
                            }
                        }
                        let accepted: HashMap<_, _> = groups.iter().flat_map(accepted_at).collect();
                        metrics::observe_delivery_delays(
                            name,
                            cover
                                .alerts
                                .iter()
                                .filter_map(|a| accepted.get(a))
                                .map(|t| t.elapsed()),
                        );
                        backoff.reset();
                        file_backoff.reset();
                        failing = None;
                        continue;
                    }
                    DigestEnd::Stopped => return,
                    DigestEnd::SendFailed(e, finished) => {
                        // Nothing settled: the next round decides again.
                        let wait = if e.class() == Class::RateLimited {
                            let until = limiter.borrow_mut().pause_after_rate_limit(finished);
                            until.saturating_duration_since(finished)
                        } else {
                            backoff.next()
                        };
                        hold_until = finished + wait;
                        // Its record (uploaded, perhaps the digest sent) goes on next round.
                        digest_in_flight = true;
                        if e.class() == Class::Permanent {
                            digest_in_flight = false;
                            file_path_closed_until = finished + file_backoff.next();
                            // WeCom refused the digest or the file (an expired media id
                            // answers 40007): the next digest starts afresh.
                            if let Err(e) = journal.clear() {
                                log::warn!("digest record not removed robot={name} error=\"{e}\"");
                            }
                        }
                        log::warn!(
                            "digest not delivered, will decide again robot={name} class={} {} retry_in_ms={}",
                            e.class().as_str(),
                            summarize(&e),
                            wait.as_millis()
                        );
                        continue;
                    }
                    DigestEnd::UploadFailed(e) => {
                        // Compact messages while the budget allows now and the file path is
                        // closed (`fallback_goes_on`); then the next round decides again.
                        compact_groups = Some((groups, true));
                        let wait = file_backoff.next();
                        file_path_closed_until = Instant::now() + wait;
                        // Logged when it starts or changes, not on every attempt.
                        let summary = summarize(&e);
                        if upload_failing.as_deref() != Some(summary.as_str()) {
                            log::error!(
                                "file upload failed, sending compact messages meanwhile robot={name} class={} {summary} file_retry_in_ms={}",
                                e.class().as_str(),
                                wait.as_millis()
                            );
                            upload_failing = Some(summary);
                        } else {
                            log::debug!(
                                "file upload failed again robot={name} file_retry_in_ms={}",
                                wait.as_millis()
                            );
                        }
                    }
                }
            }
        }
        // When each covered state was accepted, for the delivery delay.
        let template = robot.template.lock().map(|t| t.clone()).unwrap_or_default();
        let style = Style { msgtype, template: template.as_deref(), tz: settings.tz };
        // A compact fallback round keeps its groups (for the mention of what it told) and
        // what it told so far.
        let mut fallback: Option<Vec<GroupSnap>> = None;
        let mut told: HashSet<(String, String, u64)> = HashSet::new();
        let (mut composed, accepted): (Vec<Composed>, HashMap<_, Instant>) = match compact_groups {
            Some((groups, is_fallback)) => {
                let mut messages =
                    compact_messages(&groups, msgtype, settings.tz, template.as_deref());
                let payloads: Vec<Payload> = groups.iter().map(|g| g.payload.clone()).collect();
                messages.extend(mention_all(&payloads, &|p: &Payload| (robot.mentions)(p)));
                let accepted = groups.iter().flat_map(accepted_at).collect();
                if is_fallback {
                    fallback = Some(groups);
                }
                (messages, accepted)
            }
            None => {
                let accepted = match &snapshot {
                    Snapshot::Groups(groups) => groups.iter().flat_map(accepted_at).collect(),
                    Snapshot::Legacy { .. } => HashMap::new(),
                };
                (compose(snapshot, &style, &|p: &Payload| (robot.mentions)(p)), accepted)
            }
        };
        // A mention goes out after the message that told its alerts, which are settled by
        // then: a mention that fails to send is retried here, not composed again (nothing
        // pending would bring it back), at most MENTION_TRIES times.
        let mut i = 0;
        let mut mention_tries = 0;
        // The fallback keeps one message of the budget for its mention, if it has one.
        let reserve = usize::from(matches!(
            composed.last().map(|c| &c.message),
            Some(Message::Mention { .. })
        ));
        while i < composed.len() {
            let next_is_mention = matches!(composed[i].message, Message::Mention { .. });
            if let (Some(groups), true) = (&fallback, i > 0 && !next_is_mention) {
                let now = Instant::now();
                let left = limiter.borrow_mut().left_now(now);
                if !fallback_goes_on(left, reserve, now, file_path_closed_until) {
                    // The rest stays pending for the next round's decision: the file path
                    // again once its back-off has passed. The mention names what was told.
                    log::debug!(
                        "compact fallback round ends robot={name} messages={i} alerts={} budget_left={left} file_path_open={}",
                        told.len(),
                        now >= file_path_closed_until
                    );
                    composed.truncate(i);
                    let payloads = told_payloads(groups, &told);
                    composed.extend(mention_all(&payloads, &|p: &Payload| (robot.mentions)(p)));
                    if i >= composed.len() {
                        break;
                    }
                }
            }
            let c = &composed[i];
            let is_mention = matches!(c.message, Message::Mention { .. });
            if i > 0 {
                if !outbox.pause_until(not_before(hold_until)) {
                    return;
                }
                // A reload while the parts wait for budget: compose the rest anew with the
                // message type and template now in force.
                let (_, _, now_type, _) = current(live);
                let now_template = robot.template.lock().map(|t| t.clone()).unwrap_or_default();
                let same_template = match (&template, &now_template) {
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    (None, None) => true,
                    _ => false,
                };
                // A mention does not depend on either: its alerts were told already.
                if (now_type != msgtype || !same_template) && !is_mention {
                    break;
                }
            }
            let body = c.message.body();
            let (result, latency, finished) = send_once(&target, &body, name, &limiter);
            let latency_ms = latency.as_millis();
            let bytes = c.message.text().len();
            let alerts = c.cover.alerts.len();
            let part = c.part.map_or_else(String::new, |(i, n)| format!(" part={i}/{n}"));
            let kind = match &c.message {
                Message::Mention { .. } => " kind=mention",
                Message::Raw(_) => " kind=legacy",
                Message::Content { .. } if c.cover.legacy.is_some() => " kind=legacy",
                Message::Content { .. } => "",
            };
            match result {
                Ok(()) => {
                    metrics::inc_sent(name);
                    if let Some(previous) = failing.take() {
                        log::info!("delivery recovered robot={name} after=\"{previous}\"");
                    }
                    let what = if matches!(target, Target::Stdout) {
                        "dry run: message printed"
                    } else {
                        "message sent"
                    };
                    log::info!(
                        "{what} robot={name}{part}{kind} groups={} alerts={alerts} bytes={bytes} errcode=0 latency_ms={latency_ms}",
                        c.groups
                    );
                    backoff.reset();
                    outbox.settle(&c.cover, Outcome::Delivered);
                    if fallback.is_some() {
                        told.extend(c.cover.alerts.iter().cloned());
                    }
                    metrics::observe_delivery_delays(
                        name,
                        c.cover.alerts.iter().filter_map(|a| accepted.get(a)).map(|t| t.elapsed()),
                    );
                    mention_tries = 0;
                    i += 1;
                }
                Err(e) => {
                    let class = e.class();
                    metrics::inc_failed(name, &e);
                    match class {
                        Class::Retry | Class::RateLimited => {
                            metrics::inc_retry(name);
                            let wait = if class == Class::RateLimited {
                                let until = limiter.borrow_mut().pause_after_rate_limit(finished);
                                until.saturating_duration_since(finished)
                            } else {
                                backoff.next()
                            };
                            hold_until = finished + wait;
                            let summary = summarize(&e);
                            if failing.as_deref() != Some(summary.as_str()) {
                                log::warn!(
                                    "send failed, will retry robot={name}{part} class={} {} retry_in_ms={} latency_ms={latency_ms}",
                                    class.as_str(),
                                    summary,
                                    wait.as_millis()
                                );
                                failing = Some(summary);
                            } else {
                                log::debug!(
                                    "send failed again robot={name} retry_in_ms={}",
                                    wait.as_millis()
                                );
                            }
                            if is_mention {
                                mention_tries += 1;
                                if mention_tries < MENTION_TRIES {
                                    continue;
                                }
                                log::error!(
                                    "mention not sent, giving up robot={name} attempts={mention_tries} {}",
                                    summarize(&e)
                                );
                                mention_tries = 0;
                                i += 1;
                                continue;
                            }
                            outbox.settle(&c.cover, Outcome::Retry);
                            break;
                        }
                        Class::Permanent => {
                            failing = None;
                            backoff.reset();
                            let settled =
                                outbox.settle(&refused_cover(&composed, i), Outcome::Refused);
                            if settled.isolated {
                                log::warn!(
                                    "message refused, sending its groups or alerts one by one to find the bad one robot={name}{part} groups={} alerts={alerts} bytes={bytes} {}",
                                    c.groups,
                                    summarize(&e)
                                );
                            } else {
                                log::error!(
                                    "message dropped robot={name}{part}{kind} alerts={} bytes={bytes} {}",
                                    settled.given_up,
                                    summarize(&e)
                                );
                                if settled.given_up > 0 {
                                    metrics::alerts_failed(name, e.reason(), settled.given_up);
                                    outbox.keep_failed(format!(
                                        "robot: {name}\nreason: {}\nalerts: {}\n\n{}\n",
                                        summarize(&e),
                                        settled.given_up,
                                        c.message.text()
                                    ));
                                }
                            }
                            break;
                        }
                    }
                }
            }
        }
    }
}

/// Sends one body (or prints it in a dry run), records the send in the budget and its latency:
/// every message, digest and file message goes through here. Returns when it finished.
fn send_once(
    target: &Target,
    body: &str,
    name: &str,
    limiter: &RefCell<Limiter>,
) -> (Result<(), SendError>, Duration, Instant) {
    let (result, latency) = match target {
        Target::WeCom { client, url } => client.send(url, body),
        Target::Stdout => {
            println!("dry run robot={name}\n{body}");
            (Ok(()), Duration::ZERO)
        }
    };
    let finished = Instant::now();
    if matches!(target, Target::WeCom { .. }) {
        limiter.borrow_mut().record(finished);
    }
    metrics::observe_send_latency(name, latency);
    (result, latency, finished)
}

/// Attempts for a mention that fails with a retryable error (each after the usual backoff or
/// rate-limit pause): its alerts are already told, so only the ping is at stake, and a robot
/// must not stall behind it for long.
const MENTION_TRIES: u32 = 5;

/// What refusing part `i` for good refuses: its own alerts; for a part that tells none by
/// itself (a heading, or a template's text before the part that tells the group), those of
/// the parts after it, which would otherwise be composed and refused again forever.
fn refused_cover(composed: &[Composed], i: usize) -> Cover {
    let c = &composed[i];
    let mention = matches!(c.message, Message::Mention { .. });
    if !c.cover.alerts.is_empty() || c.cover.legacy.is_some() || mention {
        return c.cover.clone();
    }
    let mut rest = Cover::default();
    for later in &composed[i + 1..] {
        rest.alerts.extend(later.cover.alerts.iter().cloned());
    }
    rest
}

/// Storm mode's choice for everything pending.
enum Storm {
    /// The compact layout; `true`: as the fallback while the file path is closed.
    Compact(Vec<GroupSnap>, bool),
    Digest(Vec<GroupSnap>),
}

/// Whether a compact fallback round (the digest needed, the file path closed after a refused
/// upload) sends its next message: only while the budget allows it now (`left_now` sends, one
/// kept for the round's mention by `reserve`) and the file path is still closed. Otherwise the
/// round ends, the rest stays pending and the next round decides again: with the file path
/// once its back-off has passed. Sent to the end, a round composed for a storm would hold the
/// robot for the whole storm (one refused upload cost a bench storm its bound: 80 s at
/// `--max-delay 12s`); this way a one-off refusal costs at most one window.
fn fallback_goes_on(
    left_now: usize,
    reserve: usize,
    now: Instant,
    file_closed_until: Instant,
) -> bool {
    left_now > reserve && now < file_closed_until
}

/// The groups narrowed to the alert states told (for the mention of a fallback round cut short).
fn told_payloads(groups: &[GroupSnap], told: &HashSet<(String, String, u64)>) -> Vec<Payload> {
    groups
        .iter()
        .filter_map(|g| {
            let alerts: Vec<_> = g
                .payload
                .alerts
                .iter()
                .zip(&g.versions)
                .filter(|(_, (id, v))| told.contains(&(g.key.clone(), id.clone(), *v)))
                .map(|(a, _)| a.clone())
                .collect();
            (!alerts.is_empty()).then(|| Payload { alerts, ..g.payload.clone() })
        })
        .collect()
}

/// When the robot's budget within `max_delay` (counted from the oldest pending change, with
/// the limiter's recent sends) does not fit the full layout (the queue's estimate): compact
/// when that fits or the file path is closed (`file_open` false), else the digest; `None`
/// while the full layout fits.
fn storm(
    outbox: &Outbox,
    rate: Rate,
    recent: &[Duration],
    max_delay: Duration,
    (msgtype, tz, template): (MsgType, TzOffset, Option<&Template>),
    file_open: bool,
) -> Option<Storm> {
    let stats = outbox.stats();
    let budget = digest::capacity(rate, recent, max_delay.saturating_sub(stats.oldest_age));
    // What may go at once, without waiting for the window to reopen.
    let now_budget = digest::capacity(rate, recent, Duration::ZERO);
    if stats.messages as u64 <= budget {
        return None;
    }
    let groups = outbox.snapshot_all();
    let payloads: Vec<Payload> = groups.iter().map(|g| g.payload.clone()).collect();
    let limit = msgtype.limit();
    let compact = split::split(
        &render::adapt(compact::compact(&payloads, tz, limit, template), msgtype),
        limit,
    );
    match digest::choose(stats.messages, compact.len(), budget) {
        _ if groups.is_empty() => None,
        digest::Layout::Full => None,
        digest::Layout::Digest if file_open => Some(Storm::Digest(groups)),
        digest::Layout::Digest => Some(Storm::Compact(groups, true)),
        // A compact round that does not fit what may go now would leave its tail a window
        // behind (a minute at WeCom's budget), while the digest and its file show everything
        // now: compact only when it goes out whole at once (issue 15: a burst readable within
        // a minute).
        digest::Layout::Compact if file_open && compact.len() as u64 > now_budget => {
            Some(Storm::Digest(groups))
        }
        digest::Layout::Compact => Some(Storm::Compact(groups, false)),
    }
}

/// Everything pending in the compact layout: the blocks of each section packed into messages
/// of at most the message type's limit, each covering exactly the alerts its blocks show.
fn compact_messages(
    groups: &[GroupSnap],
    msgtype: MsgType,
    tz: TzOffset,
    template: Option<&Template>,
) -> Vec<Composed> {
    let payloads: Vec<Payload> = groups.iter().map(|g| g.payload.clone()).collect();
    let limit = msgtype.limit();
    let cover = |shown: &[(usize, usize)]| Cover {
        legacy: None,
        alerts: shown
            .iter()
            .filter_map(|&(gi, ai)| {
                let g = groups.get(gi)?;
                let (id, version) = g.versions.get(ai)?;
                Some((g.key.clone(), id.clone(), *version))
            })
            .collect(),
    };
    let message = |heading: &str, blocks: &[String], shown: &[(usize, usize)]| {
        let doc = Document {
            sections: vec![Section { heading: heading.to_string(), alerts: blocks.to_vec() }],
            footer: None,
        };
        let c = cover(shown);
        Composed {
            message: Message::Content {
                msgtype,
                content: render::adapt(doc, msgtype).to_markdown(),
            },
            groups: c.groups(),
            cover: c,
            part: None,
        }
    };
    let mut out = Vec::new();
    for (heading, blocks) in compact::sections(&payloads, tz, limit, template) {
        let (mut texts, mut shown) = (Vec::new(), Vec::new());
        for (text, alerts) in blocks {
            let fits = {
                let mut trial = texts.clone();
                trial.push(text.clone());
                let doc = Document {
                    sections: vec![Section { heading: heading.clone(), alerts: trial }],
                    footer: None,
                };
                render::adapt(doc, msgtype).to_markdown().len() <= limit
            };
            if !fits && !texts.is_empty() {
                out.push(message(&heading, &texts, &shown));
                texts.clear();
                shown.clear();
            }
            texts.push(text);
            shown.extend(alerts);
        }
        if !texts.is_empty() {
            out.push(message(&heading, &texts, &shown));
        }
    }
    out
}

/// Sends one JSON body within the budget; the result and when the request finished.
type SendOne<'a> = dyn FnMut(&str) -> (Result<(), SendError>, Instant) + 'a;

/// (group key, identity, version) → when that state was accepted.
fn accepted_at(g: &GroupSnap) -> impl Iterator<Item = ((String, String, u64), Instant)> + '_ {
    g.versions
        .iter()
        .zip(&g.since)
        .map(|((id, v), since)| ((g.key.clone(), id.clone(), *v), *since))
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// How a digest round ended.
enum DigestEnd {
    /// Digest and file message accepted: settle these alert states as told (the groups the
    /// round covered: all pending, or what a digest in flight before a restart covered).
    Delivered(Vec<GroupSnap>, Cover),
    Stopped,
    /// The digest or the file message failed (when it finished).
    SendFailed(SendError, Instant),
    /// The upload failed: nothing was sent.
    UploadFailed(SendError),
}

/// Uploads the full list, then sends the digest and the file message (each one message of
/// the budget), and settles every covered alert state only once the file message is accepted.
/// With a `journal` each step is recorded, and a digest in flight (a crash or a failed send)
/// goes on from its last step for the states it covered, reusing the uploaded file.
#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
fn send_digest(
    pending: &[GroupSnap],
    target: &Target,
    msgtype: MsgType,
    tz: TzOffset,
    name: &str,
    send: &mut SendOne,
    wait_budget: &dyn Fn() -> bool,
    journal: &inflight::Store,
    resume_within: Option<Duration>,
    last_file_name: &mut Option<String>,
) -> DigestEnd {
    let unix = unix_now();
    let record = |r: &Inflight| {
        if let Err(e) = journal.save(r) {
            // Not fatal: after a crash the step is done once more.
            log::warn!("digest record not saved robot={name} error=\"{e}\"");
        }
    };
    // Only a record the caller decided to go on with: a new digest replaces any other.
    let resumed = resume_within.and_then(|max_age| journal.load(name).map(|r| (r, max_age)));
    let resumed = resumed.and_then(|(r, max_age)| {
        let groups = inflight::resume(&r, pending, unix, max_age)?;
        Some((r, groups))
    });
    // The digest message counts all it was made from; only what the file lists is settled.
    let (mut state, groups, payloads) = match resumed {
        Some((r, groups)) => {
            log::info!(
                "digest in flight goes on robot={name} stage={:?} file={} alerts={} media_id_reused=true",
                r.stage,
                r.file_name,
                r.covered.len()
            );
            let payloads: Vec<Payload> = groups.iter().map(|g| g.payload.clone()).collect();
            (r, groups, payloads)
        }
        None => {
            let payloads: Vec<Payload> = pending.iter().map(|g| g.payload.clone()).collect();
            let now = Timestamp { unix_seconds: unix as i64, nanos: 0 };
            let file_name = digest::next_file_name(now, tz, last_file_name.as_deref());
            let list = digest::full_list_listed(&payloads, tz, now, wecom::MEDIA_MAX_BYTES);
            // What the file leaves out at its size cap stays pending for the next round.
            let listed = inflight::narrow(pending, &list.listed);
            if listed.is_empty() {
                return DigestEnd::UploadFailed(SendError::MediaSize(list.text.len()));
            }
            let file = list.text;
            let media_id = match target {
                Target::WeCom { client, url } => {
                    match client.upload_media(url, &file_name, file.as_bytes()).0 {
                        Ok(id) => id,
                        Err(e) => return DigestEnd::UploadFailed(e),
                    }
                }
                Target::Stdout => {
                    println!("dry run robot={name} file {file_name}\n{file}");
                    "dry-run".to_string()
                }
            };
            let state = Inflight {
                stage: Stage::Uploaded,
                media_id,
                uploaded_unix: unix,
                file_name,
                file_bytes: file.len(),
                covered: inflight::covered(&listed),
            };
            record(&state);
            *last_file_name = Some(state.file_name.clone());
            (state, listed, payloads)
        }
    };
    let limit = msgtype.limit();
    let text = render::adapt(digest::digest(&payloads, tz, &state.file_name, limit), msgtype)
        .to_markdown();
    if state.stage < Stage::DigestSent {
        // The upload took time: the budget, at the rate now in force, before the digest too.
        if !wait_budget() {
            return DigestEnd::Stopped;
        }
        if let (Err(e), at) = send(&msgtype.body(&text)) {
            return DigestEnd::SendFailed(e, at);
        }
        state.stage = Stage::DigestSent;
        record(&state);
    }
    if !wait_budget() {
        return DigestEnd::Stopped;
    }
    if let (Err(e), at) = send(&wecom::file_body(&state.media_id)) {
        return DigestEnd::SendFailed(e, at);
    }
    state.stage = Stage::FileSent;
    record(&state);
    let cover = Cover {
        legacy: None,
        alerts: groups
            .iter()
            .flat_map(|g| g.versions.iter().map(|(id, v)| (g.key.clone(), id.clone(), *v)))
            .collect(),
    };
    let alerts = cover.alerts.len();
    metrics::digest_sent(name, alerts);
    log::info!(
        "digest sent robot={name} groups={} alerts={alerts} bytes={} file={} file_bytes={}",
        groups.len(),
        text.len(),
        state.file_name,
        state.file_bytes
    );
    DigestEnd::Delivered(groups, cover)
}

/// `errcode=N errmsg="…" hint="…"` or `error="…"`, for one log line.
fn summarize(e: &SendError) -> String {
    match e {
        SendError::Api { errcode, errmsg } => {
            let mut s = format!("errcode={errcode} errmsg={errmsg:?}");
            if let Some(h) = wecom::hint(*errcode) {
                s.push_str(&format!(" hint={h:?}"));
            }
            s
        }
        other => format!("error={:?}", other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            attempt: 0,
            rng: 12345,
        };
        let waits: Vec<Duration> = (0..10).map(|_| b.next()).collect();
        for (i, w) in waits.iter().enumerate() {
            let exp = Duration::from_secs(1 << i.min(6)).min(Duration::from_secs(60));
            assert!(*w >= exp / 2 && *w <= exp, "attempt {i}: {w:?} vs {exp:?}");
        }
        b.reset();
        assert!(b.next() <= Duration::from_secs(1));
    }

    #[test]
    fn a_compact_fallback_round_goes_on_only_within_the_budget_and_the_back_off() {
        let t0 = Instant::now();
        let closed = t0 + Duration::from_secs(1);
        // Budget now and the file path still closed: the next compact message goes.
        assert!(fallback_goes_on(5, 0, t0, closed));
        assert!(fallback_goes_on(2, 1, t0, closed));
        // The last send of the window is kept for the round's mention.
        assert!(!fallback_goes_on(1, 1, t0, closed));
        // Spent: the round ends instead of waiting for the next window.
        assert!(!fallback_goes_on(0, 0, t0, closed));
        // The back-off has passed: the next round tries the file path again.
        assert!(!fallback_goes_on(5, 0, closed, closed));
        assert!(!fallback_goes_on(5, 0, closed + Duration::from_millis(1), closed));
    }

    /// A storm needing 100 compact messages at 20/60 s; the first upload is refused (back-off
    /// 1 s), the next accepted. Rounds as the sender runs them: a fallback round sends while
    /// `fallback_goes_on`, the next starts when the limiter allows. The digest and its file go
    /// within one window of the refusal (not after the 100 messages, 5 windows), and no
    /// window holds more than 20 sends, whether a send takes 10 ms or 300 ms.
    #[test]
    fn a_one_off_refused_upload_costs_at_most_one_window() {
        let rate = Rate { messages: 20, window: Duration::from_secs(60) };
        for latency in [Duration::from_millis(10), Duration::from_millis(300)] {
            let t0 = Instant::now();
            let mut lim = Limiter::new(rate);
            let closed = t0 + Duration::from_secs(1);
            let (mut now, mut compact, mut sends, mut uploads) = (t0, 0, Vec::new(), 0);
            let file_at = loop {
                now = lim.next_allowed(now).max(now);
                if now >= closed {
                    // The file path: upload (accepted), then the digest and the file message.
                    uploads += 1;
                    for _ in 0..2 {
                        now = lim.next_allowed(now).max(now);
                        sends.push(now);
                        now += latency;
                        lim.record(now);
                    }
                    break now;
                }
                // A fallback round: its first message always, the rest while allowed.
                let mut first = true;
                while compact < 100
                    && (first || fallback_goes_on(lim.left_now(now), 0, now, closed))
                {
                    first = false;
                    sends.push(now);
                    compact += 1;
                    now += latency;
                    lim.record(now);
                }
            };
            assert_eq!(uploads, 1);
            assert!(compact <= 20, "{latency:?}: {compact} compact messages before the file");
            let bound = t0 + Duration::from_secs(62) + Duration::from_secs(1) + latency * 2;
            assert!(file_at <= bound, "{latency:?}: file after {:?}", file_at - t0);
            for (i, &a) in sends.iter().enumerate() {
                let n = sends[i..].iter().take_while(|&&b| b - a < rate.window).count();
                assert!(n <= 20, "{latency:?}: {n} sends in a window");
            }
        }
    }

    #[test]
    fn a_refused_part_that_tells_nothing_refuses_the_alerts_after_it() {
        let part = |ids: &[&str], mention: bool| Composed {
            message: if mention {
                Message::Mention { content: "@".into(), users: vec![], mobiles: vec![], all: true }
            } else {
                Message::Content { msgtype: crate::wecom::MsgType::Markdown, content: "x".into() }
            },
            cover: Cover {
                legacy: None,
                alerts: ids.iter().map(|id| ("g".to_string(), id.to_string(), 1)).collect(),
            },
            part: Some((1, 3)),
            groups: usize::from(!mention),
        };
        // A template's parts: only the last tells the group.
        let parts = [part(&[], false), part(&[], false), part(&["a", "b"], false), part(&[], true)];
        let ids = |c: Cover| c.alerts.into_iter().map(|(_, id, _)| id).collect::<Vec<_>>();
        assert_eq!(ids(refused_cover(&parts, 0)), ["a", "b"]);
        assert_eq!(ids(refused_cover(&parts, 2)), ["a", "b"]);
        // A refused mention refuses nothing: its alerts were told.
        assert!(ids(refused_cover(&parts, 3)).is_empty());
    }
}
