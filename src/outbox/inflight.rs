//! A storm-mode digest in flight, kept across a crash (with `--state-dir`): one small record
//! file, `<robot dir>/digest-inflight.json`, next to the spool's directories. Without
//! `--state-dir` the same record is kept in memory, so a digest retried after a failed send
//! still reuses its upload and does not send its digest message again.
//!
//! A digest round is three steps: upload the full list (no budget; the media id WeCom returns
//! is valid for 3 days), send the digest message, send the file message; the covered alert
//! states leave the outbox only once the file message is accepted. Without a record, a crash
//! after the upload uploads again, and a crash after the file message (before the spool forgot
//! the covered notifications) sends the digest and the file again for the same changes. So the
//! sender writes the record after each step, and reads it back:
//! - [`Stage::Uploaded`] / [`Stage::DigestSent`]: the next digest round, when every covered
//!   state is still pending as it was, covers exactly those states, reuses the media id and
//!   file name (no upload) and skips the digest message if it was sent. Otherwise (a covered
//!   state changed or left, the media id is near its 3 days, WeCom refused it) the record is
//!   dropped and the round starts afresh.
//! - [`Stage::FileSent`]: at start, the covered states still pending (replayed from the spool)
//!   are settled as told, not sent again. The record stays until the next digest replaces it.
//!
//! A record goes on only while it is recent: within [`max_age`] (`--max-delay` + 5 minutes)
//! of its upload. An older one (a relay down for long, or a record left behind) is never
//! resumed nor used to settle replayed states: the group has long seen other messages, and
//! Alertmanager repeating the same still-firing alerts later must get a fresh digest, not the
//! old file message alone. The sender also clears the record as soon as a round decides not to
//! go on with it (a covered state changed or was told another way).
//!
//! Crash windows (at most once more, never lost): between a step accepted by WeCom and its
//! record on disk the step is done again (one more upload, digest or file message).
//!
//! A covered state is (group key, alert identity, status and `startsAt`), which a replay from
//! the spool reproduces; versions are per process and would not.
//!
//! Writes are durable (temp file, fsync, rename, directory fsync) and happen on the sender
//! thread, never on a coroutine. An unreadable record is logged and ignored: at worst a file
//! is uploaded or sent once more. The decisions ([`resume`], [`told`]) are pure.

use std::cell::RefCell;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::alertmanager::{Alert, Status};
use crate::outbox::queue::{identity, Cover, GroupSnap};

/// WeCom keeps an uploaded file 3 days; reuse its id only well within that.
/// <https://developer.work.weixin.qq.com/document/path/91770#文件上传接口>
pub const MEDIA_REUSE_FOR: Duration = Duration::from_secs(3 * 24 * 3600 - 3600);

const FILE_NAME: &str = "digest-inflight.json";

/// How long after its upload a record may still go on: the robot's `--max-delay` plus this.
pub const RESUME_GRACE: Duration = Duration::from_secs(300);

/// The age past which a record is neither resumed nor used to settle replayed states.
pub fn max_age(max_delay: Duration) -> Duration {
    max_delay.saturating_add(RESUME_GRACE)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Uploaded,
    DigestSent,
    FileSent,
}

impl Stage {
    fn as_str(self) -> &'static str {
        match self {
            Stage::Uploaded => "uploaded",
            Stage::DigestSent => "digest_sent",
            Stage::FileSent => "file_sent",
        }
    }

    fn parse(s: &str) -> Option<Stage> {
        [Stage::Uploaded, Stage::DigestSent, Stage::FileSent]
            .into_iter()
            .find(|st| st.as_str() == s)
    }
}

/// One covered alert state: (group key, identity, status and `startsAt`).
pub type StateKey = (String, String, String);

pub fn state_key(group: &str, alert: &Alert) -> StateKey {
    let status = match alert.status {
        Status::Firing => "firing",
        Status::Resolved => "resolved",
    };
    let starts = alert
        .starts_at
        .map_or_else(|| "-".to_string(), |t| format!("{}.{:09}", t.unix_seconds, t.nanos));
    (group.to_string(), identity(alert), format!("{status}@{starts}"))
}

/// The record: what a digest round has done so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inflight {
    pub stage: Stage,
    pub media_id: String,
    /// When the file was uploaded (Unix seconds).
    pub uploaded_unix: u64,
    pub file_name: String,
    pub file_bytes: usize,
    pub covered: Vec<StateKey>,
}

impl Inflight {
    pub fn to_json(&self) -> String {
        let covered: Vec<Value> =
            self.covered.iter().map(|(g, id, st)| json!([g, id, st])).collect();
        json!({
            "version": 1,
            "stage": self.stage.as_str(),
            "media_id": self.media_id,
            "uploaded_unix": self.uploaded_unix,
            "file_name": self.file_name,
            "file_bytes": self.file_bytes,
            "covered": covered,
        })
        .to_string()
    }

    pub fn parse(bytes: &[u8]) -> Result<Inflight, String> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
        if v["version"].as_u64() != Some(1) {
            return Err("unknown version".into());
        }
        let text = |name: &str| {
            v[name].as_str().map(str::to_string).ok_or_else(|| format!("{name} missing"))
        };
        let stage = Stage::parse(&text("stage")?).ok_or("unknown stage")?;
        let covered = v["covered"]
            .as_array()
            .ok_or("covered missing")?
            .iter()
            .map(|c| match (c[0].as_str(), c[1].as_str(), c[2].as_str()) {
                (Some(g), Some(id), Some(st)) => Ok((g.into(), id.into(), st.into())),
                _ => Err("covered entry malformed".to_string()),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Inflight {
            stage,
            media_id: text("media_id")?,
            uploaded_unix: v["uploaded_unix"].as_u64().ok_or("uploaded_unix missing")?,
            file_name: text("file_name")?,
            file_bytes: v["file_bytes"].as_u64().unwrap_or(0) as usize,
            covered,
        })
    }

    /// Whether the record is within `max_age` of its upload at `now_unix`.
    pub fn recent(&self, now_unix: u64, max_age: Duration) -> bool {
        now_unix.saturating_sub(self.uploaded_unix) <= max_age.as_secs()
            && now_unix + 300 >= self.uploaded_unix
    }

    /// Whether the media id may still be used at `now_unix`.
    pub fn media_fresh(&self, now_unix: u64) -> bool {
        now_unix.saturating_sub(self.uploaded_unix) < MEDIA_REUSE_FOR.as_secs()
            && now_unix + 300 >= self.uploaded_unix
    }
}

/// Every state key of what is pending.
pub fn covered(groups: &[GroupSnap]) -> Vec<StateKey> {
    groups.iter().flat_map(|g| g.payload.alerts.iter().map(|a| state_key(&g.key, a))).collect()
}

/// The pending groups narrowed to the record's states, when a digest in flight can go on:
/// not yet sent as a file, recent (`max_age`), its media id fresh, and every covered state
/// still pending as it was. `None`: start afresh.
pub fn resume(
    record: &Inflight,
    pending: &[GroupSnap],
    now_unix: u64,
    max_age: Duration,
) -> Option<Vec<GroupSnap>> {
    if record.stage == Stage::FileSent
        || !record.media_fresh(now_unix)
        || !record.recent(now_unix, max_age)
        || record.covered.is_empty()
    {
        return None;
    }
    let wanted: std::collections::HashSet<&StateKey> = record.covered.iter().collect();
    let mut keep = Vec::new();
    for (gi, g) in pending.iter().enumerate() {
        for (ai, a) in g.payload.alerts.iter().enumerate() {
            if wanted.contains(&state_key(&g.key, a)) {
                keep.push((gi, ai));
            }
        }
    }
    (keep.len() == record.covered.len()).then(|| narrow(pending, &keep))
}

/// The pending groups narrowed to the (group, alert) indices `keep` (in the groups' order):
/// what a digest's file lists, or what a record covered. Groups left with no alert are dropped.
pub fn narrow(pending: &[GroupSnap], keep: &[(usize, usize)]) -> Vec<GroupSnap> {
    let mut wanted: Vec<(usize, usize)> = keep.to_vec();
    wanted.sort_unstable();
    wanted.dedup();
    let mut out = Vec::new();
    for (gi, g) in pending.iter().enumerate() {
        let lo = wanted.partition_point(|&(x, _)| x < gi);
        let hi = wanted.partition_point(|&(x, _)| x <= gi);
        let keep: Vec<usize> = wanted[lo..hi]
            .iter()
            .map(|&(_, ai)| ai)
            .filter(|&ai| ai < g.payload.alerts.len())
            .collect();
        if keep.is_empty() {
            continue;
        }
        let mut n = g.clone();
        n.payload.alerts = keep.iter().map(|&i| g.payload.alerts[i].clone()).collect();
        n.versions = keep.iter().filter_map(|&i| g.versions.get(i).cloned()).collect();
        n.solo = keep.iter().map(|&i| g.solo.get(i).copied().unwrap_or(false)).collect();
        n.since = keep.iter().filter_map(|&i| g.since.get(i).copied()).collect();
        out.push(n);
    }
    out
}

/// What of the pending state a file already sent (before a restart) told: to settle as
/// delivered instead of sending it again; only while the record is recent (`max_age`).
pub fn told(record: &Inflight, pending: &[GroupSnap], now_unix: u64, max_age: Duration) -> Cover {
    let mut cover = Cover::default();
    if record.stage != Stage::FileSent || !record.recent(now_unix, max_age) {
        return cover;
    }
    let wanted: std::collections::HashSet<&StateKey> = record.covered.iter().collect();
    for g in pending {
        for (a, (id, version)) in g.payload.alerts.iter().zip(&g.versions) {
            if wanted.contains(&state_key(&g.key, a)) {
                cover.alerts.push((g.key.clone(), id.clone(), *version));
            }
        }
    }
    cover
}

/// Where one robot's record is kept: the record file of its directory (with `--state-dir`),
/// or memory (without), so a digest retried after a failed send reuses its media id and does
/// not send its digest message again either way; only a crash forgets the memory.
pub struct Store {
    dir: Option<PathBuf>,
    memory: RefCell<Option<Inflight>>,
}

impl Store {
    pub fn new(robot_dir: &Path) -> Store {
        Store { dir: Some(robot_dir.to_path_buf()), memory: RefCell::new(None) }
    }

    /// A record kept in memory only (no `--state-dir`).
    pub fn in_memory() -> Store {
        Store { dir: None, memory: RefCell::new(None) }
    }

    /// The record, if there is a readable one (an unreadable one is logged and ignored).
    pub fn load(&self, robot: &str) -> Option<Inflight> {
        let Some(dir) = &self.dir else {
            return self.memory.borrow().clone();
        };
        let bytes = match fs::read(dir.join(FILE_NAME)) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                log::warn!("digest record unreadable, ignored robot={robot} error=\"{e}\"");
                return None;
            }
        };
        match Inflight::parse(&bytes) {
            Ok(r) => Some(r),
            Err(e) => {
                log::warn!("digest record unreadable, ignored robot={robot} error=\"{e}\"");
                None
            }
        }
    }

    /// Replaces the record; on disk durably: temp file, fsync, rename, directory fsync.
    pub fn save(&self, record: &Inflight) -> io::Result<()> {
        let Some(dir) = &self.dir else {
            *self.memory.borrow_mut() = Some(record.clone());
            return Ok(());
        };
        let tmp = dir.join(format!("{FILE_NAME}.tmp"));
        {
            let mut f = File::create(&tmp)?;
            f.write_all(record.to_json().as_bytes())?;
            f.sync_all()?;
        }
        fs::rename(&tmp, dir.join(FILE_NAME))?;
        File::open(dir)?.sync_all()
    }

    pub fn clear(&self) -> io::Result<()> {
        let Some(dir) = &self.dir else {
            *self.memory.borrow_mut() = None;
            return Ok(());
        };
        match fs::remove_file(dir.join(FILE_NAME)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => File::open(dir)?.sync_all(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alertmanager::{Pairs, Payload};
    use crate::time::Timestamp;
    use std::time::Instant;

    fn alert(fp: &str, status: Status, start: i64) -> Alert {
        Alert {
            status,
            labels: Pairs(vec![("alertname".into(), "A".into())]),
            annotations: Pairs::default(),
            starts_at: Some(Timestamp { unix_seconds: start, nanos: 0 }),
            ends_at: None,
            generator_url: None,
            fingerprint: fp.into(),
        }
    }

    fn group(key: &str, alerts: Vec<Alert>) -> GroupSnap {
        let n = alerts.len();
        GroupSnap {
            key: key.into(),
            versions: alerts.iter().map(|a| (a.fingerprint.clone(), 7)).collect(),
            payload: Payload::for_test(key, alerts),
            solo: vec![false; n],
            alone: false,
            since: vec![Instant::now(); n],
        }
    }

    fn record(stage: Stage, covered: Vec<StateKey>) -> Inflight {
        Inflight {
            stage,
            media_id: "m1".into(),
            uploaded_unix: 1_000_000,
            file_name: "alerts-20261202-1030.md".into(),
            file_bytes: 42,
            covered,
        }
    }

    /// The bound of the tests: `--max-delay 2m` (its default).
    const AGE: Duration = Duration::from_secs(120 + 300);

    /// Issue 15 (adversarial review): a record left behind (the relay killed between digest
    /// and file, the states later told another way) was taken up again when Alertmanager
    /// repeated the same still-firing alerts long after: only the old file message went out.
    #[test]
    fn issue_15_an_old_record_is_neither_resumed_nor_settles_anything() {
        let pending = [group("g1", vec![alert("a", Status::Firing, 1)])];
        let rec = record(Stage::DigestSent, covered(&pending));
        let age = max_age(Duration::from_secs(120));
        assert_eq!(age, AGE);
        assert!(resume(&rec, &pending, 1_000_000 + 420, age).is_some(), "within the bound");
        assert!(resume(&rec, &pending, 1_000_000 + 421, age).is_none(), "past the bound");
        let sent = record(Stage::FileSent, covered(&pending));
        assert_eq!(told(&sent, &pending, 1_000_000 + 420, age).alerts.len(), 1);
        assert!(told(&sent, &pending, 1_000_000 + 421, age).alerts.is_empty());
    }

    #[test]
    fn round_trips_and_refuses_garbage() {
        let r =
            record(Stage::DigestSent, vec![("g".into(), "a".into(), "firing@1.000000000".into())]);
        assert_eq!(Inflight::parse(r.to_json().as_bytes()), Ok(r));
        for bad in ["", "{}", r#"{"version":2}"#, r#"{"version":1,"stage":"x"}"#] {
            assert!(Inflight::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn resumes_exactly_the_covered_states_while_they_are_pending_as_they_were() {
        let before =
            [group("g1", vec![alert("a", Status::Firing, 1), alert("b", Status::Firing, 1)])];
        let rec = record(Stage::Uploaded, covered(&before));
        // A new alert arrived meanwhile: the round covers the recorded two only.
        let now = [group(
            "g1",
            vec![
                alert("a", Status::Firing, 1),
                alert("c", Status::Firing, 2),
                alert("b", Status::Firing, 1),
            ],
        )];
        let subset = resume(&rec, &now, 1_000_100, AGE).expect("resumable");
        let fps: Vec<&str> =
            subset[0].payload.alerts.iter().map(|a| a.fingerprint.as_str()).collect();
        assert_eq!(fps, ["a", "b"]);
        assert_eq!(subset[0].versions.len(), 2);
        // A covered state changed (b resolved): the file would be stale, start afresh.
        let changed =
            [group("g1", vec![alert("a", Status::Firing, 1), alert("b", Status::Resolved, 1)])];
        assert!(resume(&rec, &changed, 1_000_100, AGE).is_none());
        // The media id is near its 3 days.
        assert!(resume(&rec, &now, 1_000_000 + 3 * 24 * 3600, Duration::MAX).is_none());
        // Already sent as a file: nothing to resume.
        assert!(resume(&record(Stage::FileSent, covered(&before)), &now, 1_000_100, AGE).is_none());
    }

    #[test]
    fn narrow_keeps_exactly_the_listed_alerts() {
        let pending = [
            group("g1", vec![alert("a", Status::Firing, 1), alert("b", Status::Resolved, 1)]),
            group("g2", vec![alert("c", Status::Firing, 1)]),
            group("g3", vec![alert("d", Status::Firing, 1), alert("e", Status::Firing, 1)]),
        ];
        let got = narrow(&pending, &[(2, 1), (0, 1), (9, 0), (0, 7)]);
        let fps: Vec<Vec<&str>> = got
            .iter()
            .map(|g| g.payload.alerts.iter().map(|a| a.fingerprint.as_str()).collect())
            .collect();
        assert_eq!(fps, [vec!["b"], vec!["e"]]);
        assert_eq!(got[0].versions, [("b".to_string(), 7)]);
        assert_eq!(covered(&got).len(), 2);
    }

    #[test]
    fn a_file_sent_before_a_restart_settles_what_it_told() {
        let before = [group("g1", vec![alert("a", Status::Firing, 1)])];
        let rec = record(Stage::FileSent, covered(&before));
        let now = [group("g1", vec![alert("a", Status::Firing, 1), alert("b", Status::Firing, 1)])];
        let cover = told(&rec, &now, 1_000_100, AGE);
        assert_eq!(cover.alerts, vec![("g1".to_string(), "a".to_string(), 7)]);
        // A later episode of the same alert is news.
        let later = [group("g1", vec![alert("a", Status::Firing, 5)])];
        assert!(told(&rec, &later, 1_000_100, AGE).alerts.is_empty());
        // Only a file that was sent.
        assert!(told(&record(Stage::DigestSent, covered(&before)), &now, 1_000_100, AGE)
            .alerts
            .is_empty());
    }

    #[test]
    fn store_saves_loads_and_clears() {
        let dir = std::env::temp_dir().join(format!("wxr-inflight-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("dir");
        let store = Store::new(&dir);
        assert_eq!(store.load("t"), None);
        let r = record(Stage::Uploaded, vec![]);
        store.save(&r).expect("save");
        assert_eq!(store.load("t"), Some(r.clone()));
        fs::write(dir.join(FILE_NAME), b"{half").expect("write");
        assert_eq!(store.load("t"), None, "unreadable: ignored");
        store.clear().expect("clear");
        store.clear().expect("clear twice");
        assert!(!dir.join(FILE_NAME).exists());
        let _ = fs::remove_dir_all(&dir);
        let memory = Store::in_memory();
        assert_eq!(memory.load("t"), None);
        memory.save(&r).expect("save");
        assert_eq!(memory.load("t"), Some(r));
        memory.clear().expect("clear");
        assert_eq!(memory.load("t"), None);
    }
}
