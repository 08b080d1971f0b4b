//! The on-disk outbox: one file per accepted notification, deleted once it is delivered.
//!
//! # Invariants
//! - A notification is acknowledged (HTTP 200) only after its file is complete and durable:
//!   written to `queue/<id>.tmp`, fsynced, renamed to `queue/<id>.item`, directory fsynced.
//!   A crash before the rename leaves only a `.tmp`, which recovery deletes: that notification
//!   was never acknowledged, so Alertmanager still holds it and will retry.
//! - A file is deleted only after every message it holds was delivered or permanently failed
//!   (at-least-once: a crash between send and delete resends it once). When only some of a
//!   notification's parts went out, the file is atomically replaced by one with the rest.
//! - IDs are monotonic: recovery continues after the highest ID on disk, and replays in ID order,
//!   which is arrival order.
//!
//! # Format
//! `WXR1 <payload length> <FNV-1a 64 checksum, 16 hex digits>\n` followed by the payload, a JSON
//! object: `{"id", "group_key", "identities", "alerts", "parts", "created_unix"}`.
//!
//! # Recovery
//! Every `.item` is read and checked; a short, unparsable or checksum-failing file is moved to
//! `corrupt/`, counted and logged, and recovery goes on: one bad file never blocks the rest.
//! Permanently failed messages are kept as `failed/<id>-<unix time>.md` for a human to read.
//!
//! Directory layout under `--state-dir`: `queue/`, `failed/`, `corrupt/`.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

const MAGIC: &str = "WXR1";

/// One accepted notification as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub id: u64,
    pub group_key: String,
    /// Alert identities (fingerprint or label hash) with status, for superseding.
    pub identities: Vec<String>,
    pub alerts: usize,
    /// Messages still to send, each within WeCom's limit.
    pub parts: Vec<String>,
    pub created_unix: u64,
}

#[derive(Debug)]
pub struct Error {
    doing: String,
    source: io::Error,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}: {}", self.doing, self.source)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

fn ctx(doing: impl FnOnce() -> String) -> impl FnOnce(io::Error) -> Error {
    move |source| Error { doing: doing(), source }
}

pub struct Spool {
    queue: PathBuf,
    failed: PathBuf,
    corrupt: PathBuf,
}

/// What recovery found.
pub struct Recovered {
    pub records: Vec<Record>,
    pub corrupt: usize,
}

impl Spool {
    /// Opens (creating) the directories and recovers what is pending, in ID order.
    pub fn open(state_dir: &Path) -> Result<(Spool, Recovered), Error> {
        let spool = Spool {
            queue: state_dir.join("queue"),
            failed: state_dir.join("failed"),
            corrupt: state_dir.join("corrupt"),
        };
        for dir in [&spool.queue, &spool.failed, &spool.corrupt] {
            fs::create_dir_all(dir).map_err(ctx(|| format!("creating {}", dir.display())))?;
        }
        let recovered = spool.recover()?;
        Ok((spool, recovered))
    }

    fn recover(&self) -> Result<Recovered, Error> {
        let mut records = Vec::new();
        let mut corrupt = 0;
        let entries = fs::read_dir(&self.queue)
            .map_err(ctx(|| format!("reading {}", self.queue.display())))?;
        for entry in entries.flatten() {
            let path = entry.path();
            match path.extension().and_then(|e| e.to_str()) {
                Some("tmp") => {
                    // Never acknowledged: Alertmanager still has it.
                    let _ = fs::remove_file(&path);
                }
                Some("item") => match fs::read(&path).ok().and_then(|b| decode(&b)) {
                    Some(record) => records.push(record),
                    None => {
                        corrupt += 1;
                        log::error!("spool file is corrupt, moved aside file={}", path.display());
                        if let Some(name) = path.file_name() {
                            let _ = fs::rename(&path, self.corrupt.join(name));
                        }
                    }
                },
                _ => {}
            }
        }
        records.sort_by_key(|r| r.id);
        Ok(Recovered { records, corrupt })
    }

    fn item_path(&self, id: u64) -> PathBuf {
        self.queue.join(format!("{id:020}.item"))
    }

    /// Writes (or atomically replaces) a record and makes it durable before returning.
    pub fn write(&self, record: &Record) -> Result<(), Error> {
        let final_path = self.item_path(record.id);
        let tmp = final_path.with_extension("tmp");
        let bytes = encode(record);
        let result = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, &final_path)?;
            File::open(&self.queue)?.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(ctx(|| format!("writing {}", final_path.display())))
    }

    /// Deletes a finished record. A lost delete only means one resend after a crash.
    pub fn remove(&self, id: u64) -> Result<(), Error> {
        let path = self.item_path(id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ctx(|| format!("removing {}", path.display()))(e)),
        }
    }

    /// Keeps a permanently failed message for a human to read.
    pub fn keep_failed(&self, id: u64, unix: u64, text: &str) -> Result<(), Error> {
        let path = self.failed.join(format!("{id:020}-{unix}.md"));
        fs::write(&path, text).map_err(ctx(|| format!("writing {}", path.display())))
    }
}

/// FNV-1a, 64 bit: a few lines, no dependency, and enough to catch torn or rotted files.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

fn encode(r: &Record) -> Vec<u8> {
    let payload = json!({
        "id": r.id,
        "group_key": r.group_key,
        "identities": r.identities,
        "alerts": r.alerts,
        "parts": r.parts,
        "created_unix": r.created_unix,
    })
    .to_string();
    let mut out =
        format!("{MAGIC} {} {:016x}\n", payload.len(), fnv1a64(payload.as_bytes())).into_bytes();
    out.extend_from_slice(payload.as_bytes());
    out
}

fn decode(bytes: &[u8]) -> Option<Record> {
    let newline = bytes.iter().position(|&b| b == b'\n')?;
    let header = std::str::from_utf8(&bytes[..newline]).ok()?;
    let mut fields = header.split(' ');
    if fields.next()? != MAGIC {
        return None;
    }
    let len: usize = fields.next()?.parse().ok()?;
    let sum = u64::from_str_radix(fields.next()?, 16).ok()?;
    let payload = &bytes[newline + 1..];
    if payload.len() != len || fnv1a64(payload) != sum {
        return None;
    }
    let v: Value = serde_json::from_slice(payload).ok()?;
    let strings = |key: &str| -> Option<Vec<String>> {
        v.get(key)?.as_array()?.iter().map(|s| s.as_str().map(str::to_string)).collect()
    };
    Some(Record {
        id: v.get("id")?.as_u64()?,
        group_key: v.get("group_key")?.as_str()?.to_string(),
        identities: strings("identities")?,
        alerts: usize::try_from(v.get("alerts")?.as_u64()?).ok()?,
        parts: strings("parts")?,
        created_unix: v.get("created_unix")?.as_u64()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u64) -> Record {
        Record {
            id,
            group_key: "{}:{alertname=\"X\"}".into(),
            identities: vec!["abc/firing".into()],
            alerts: 1,
            parts: vec!["## 告警通知".into(), "second".into()],
            created_unix: 1_700_000_000,
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("wxr-spool-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn round_trip_and_order() -> Result<(), Error> {
        let dir = temp_dir("rt");
        let (spool, rec) = Spool::open(&dir)?;
        assert!(rec.records.is_empty());
        spool.write(&record(2))?;
        spool.write(&record(1))?;
        spool.write(&record(3))?;
        spool.remove(3)?;
        let (_, rec) = Spool::open(&dir)?;
        assert_eq!(rec.records, vec![record(1), record(2)]);
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn corrupt_files_are_moved_aside_and_counted() -> Result<(), Error> {
        let dir = temp_dir("corrupt");
        let (spool, _) = Spool::open(&dir)?;
        spool.write(&record(1))?;
        spool.write(&record(2))?;
        spool.write(&record(3))?;
        // Flip a byte in 1, truncate 2, leave 3 alone, add a stray tmp.
        let p1 = spool.item_path(1);
        let mut b = fs::read(&p1).unwrap_or_default();
        let last = b.len() - 3;
        b[last] ^= 0x20;
        let _ = fs::write(&p1, b);
        let p2 = spool.item_path(2);
        let b = fs::read(&p2).unwrap_or_default();
        let _ = fs::write(&p2, &b[..b.len() / 2]);
        let _ = fs::write(dir.join("queue/00000000000000000009.tmp"), b"half");
        let (_, rec) = Spool::open(&dir)?;
        assert_eq!(rec.records, vec![record(3)]);
        assert_eq!(rec.corrupt, 2);
        assert_eq!(fs::read_dir(dir.join("corrupt")).map(|d| d.count()).unwrap_or(0), 2);
        assert!(!dir.join("queue/00000000000000000009.tmp").exists());
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }
}
