//! The on-disk outbox: accepted notifications as Alertmanager sent them, written by one writer
//! thread per spool with group commit, deleted once nothing pending refers to them.
//!
//! # Invariants
//! - A notification is acknowledged (HTTP 200) only after the file holding it is complete and
//!   durable. The writer takes every record waiting, writes them into one file
//!   `queue/<first id>.rec.tmp`, fsyncs it, renames it to `queue/<first id>.rec`, fsyncs the
//!   directory, and only then wakes every waiter of that batch: one fsync of the file and one of
//!   the directory cover all of them. A crash before the rename leaves only a `.tmp`, which
//!   recovery deletes: those notifications were never acknowledged, Alertmanager retries them.
//! - Intake waits for the writer with `may`'s channel (a coroutine yields, it does not block its
//!   worker); no disk work runs on a coroutine or under the outbox lock.
//! - A file is deleted when every record in it was released by the queue (delivered, replaced
//!   by a newer state or given up): at-least-once, a crash between send and delete resends.
//!   A record released while others in its file are pending is appended to the ledger
//!   `queue/released.ids` (one ID a line, not fsynced: a lost line only means one resend), and
//!   recovery skips it: a restart never replays what was delivered. The ledger is rewritten at
//!   open and removed once no file holds a released record.
//! - Record IDs are monotonic: recovery continues after the highest ID on disk and replays in
//!   ID order, which is arrival order. Directories created here are fsynced into their parents.
//!
//! # Format (version 2)
//! A `.rec` file is one or more frames: `WXR2 <payload length> <FNV-1a 64, 16 hex digits>\n`
//! then the payload: a JSON line `{"id":N,"created_unix":T}\n` followed by the webhook body as
//! received (Alertmanager's own JSON, so a record is readable with any JSON tool).
//!
//! Version 1 (1.0.0): `queue/<id>.item`, one frame `WXR1 <len> <fnv>\n` + JSON
//! `{"id","group_key","identities","alerts","parts","created_unix"}` holding rendered messages.
//! Still read, and delivered as they are.
//!
//! # Recovery
//! Every file is read and each frame checked; a file with a short, unparsable or
//! checksum-failing frame is moved to `corrupt/` (its good frames are written again into a new
//! file first), counted and logged, and recovery goes on. Alerts WeCom refused for good are
//! kept in `failed/<unix>-<pid>-<n>.md`, one file per message, never overwritten.
//!
//! Directory layout under a robot's directory: `queue/`, `failed/`, `corrupt/`.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

const MAGIC_V1: &str = "WXR1";
const MAGIC_V2: &str = "WXR2";

/// One recovered record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// A webhook body as accepted.
    Body { id: u64, created_unix: u64, body: Vec<u8> },
    /// 1.0.0's rendered messages still to send.
    Rendered { id: u64, created_unix: u64, parts: Vec<String> },
}

impl Record {
    pub fn id(&self) -> u64 {
        match self {
            Record::Body { id, .. } | Record::Rendered { id, .. } => *id,
        }
    }
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

/// What recovery found.
pub struct Recovered {
    pub records: Vec<Record>,
    pub corrupt: usize,
}

struct WriteJob {
    id: u64,
    frame: Vec<u8>,
    /// Told the outcome once the batch is durable. The text names no path (it may reach an
    /// HTTP answer).
    done: may::sync::mpsc::Sender<Result<(), String>>,
}

#[derive(Default)]
struct Jobs {
    writes: Vec<WriteJob>,
    removes: Vec<u64>,
    failed: Vec<String>,
    stop: bool,
}

struct Shared {
    jobs: Mutex<Jobs>,
    wake: Condvar,
    healthy: AtomicBool,
}

pub struct Spool {
    shared: Arc<Shared>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Above every ID on disk, released ones included: a new record must never take the ID
    /// of a released one still in the ledger (recovery would skip it).
    first_free_id: u64,
}

struct Dirs {
    queue: PathBuf,
    /// Released records whose file is still there (see the module doc).
    ledger: PathBuf,
    failed: PathBuf,
    corrupt: PathBuf,
}

/// The writer thread's own books: which file holds which record.
#[derive(Default)]
struct Files {
    path: HashMap<u64, PathBuf>,
    live: HashMap<u64, usize>,
    file_of: HashMap<u64, u64>,
    /// Every record of a file, to drop its released ones from the ledger when it goes.
    records: HashMap<u64, Vec<u64>>,
    /// Released records whose file is still there: what the ledger must hold.
    released: HashSet<u64>,
    /// Lines in the ledger file (grows until it is rewritten).
    ledger_lines: usize,
}

impl Files {
    /// Records a file; `all` is every record in it, `released` those already released.
    fn add(&mut self, file: u64, path: PathBuf, all: &[u64], released: &HashSet<u64>) {
        let live: Vec<u64> = all.iter().copied().filter(|r| !released.contains(r)).collect();
        self.path.insert(file, path);
        self.live.insert(file, live.len());
        for r in &live {
            self.file_of.insert(*r, file);
        }
        self.released.extend(all.iter().filter(|r| released.contains(r)));
        self.records.insert(file, all.to_vec());
    }

    /// Forgets a record; returns the file to delete when it was the last in it, or else
    /// `None` and the record goes to the ledger (`to_ledger`).
    fn release(&mut self, record: u64, to_ledger: &mut String) -> Option<PathBuf> {
        let file = self.file_of.remove(&record)?;
        let live = self.live.get_mut(&file)?;
        *live = live.saturating_sub(1);
        if *live > 0 {
            self.released.insert(record);
            self.ledger_lines += 1;
            to_ledger.push_str(&format!("{record}\n"));
            return None;
        }
        self.live.remove(&file);
        for r in self.records.remove(&file).unwrap_or_default() {
            self.released.remove(&r);
        }
        self.path.remove(&file)
    }

    /// Rewrites the ledger to what it must hold (removes it when nothing), once files are
    /// gone. Called after the deletes, so a crash in between only leaves stale lines, which
    /// the next open drops.
    fn compact_ledger(&mut self, dirs: &Dirs, force: bool) -> io::Result<()> {
        if self.released.is_empty() {
            if self.ledger_lines > 0 || force {
                self.ledger_lines = 0;
                remove_if_there(&dirs.ledger)?;
                // At open this must be durable: the next IDs may reuse the stale ones.
                if force {
                    sync_dir(&dirs.queue)?;
                }
            }
            return Ok(());
        }
        if !force && self.ledger_lines <= 2 * self.released.len() + 1024 {
            return Ok(());
        }
        let mut ids: Vec<u64> = self.released.iter().copied().collect();
        ids.sort_unstable();
        let text: String = ids.iter().map(|id| format!("{id}\n")).collect();
        write_durable(&dirs.queue, &dirs.ledger, text.as_bytes())?;
        self.ledger_lines = ids.len();
        Ok(())
    }
}

fn remove_if_there(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Appends released IDs to the ledger. Not fsynced: a lost line only means one resend.
fn append_ledger(path: &Path, text: &str) -> io::Result<()> {
    let mut f = fs::OpenOptions::new().create(true).append(true).open(path)?;
    f.write_all(text.as_bytes())
}

/// The released IDs the ledger holds (none when it does not exist). A torn last line is
/// skipped: that record is only sent once more.
fn read_ledger(path: &Path) -> io::Result<HashSet<u64>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(HashSet::new()),
        Err(e) => Err(e),
    }
}

/// Creates `dir` and any missing parents, fsyncing each new directory into its parent so the
/// directory entry itself survives a crash.
pub fn create_dir_durable(dir: &Path) -> Result<(), Error> {
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(d) = cur {
        if d.as_os_str().is_empty() || d.is_dir() {
            break;
        }
        missing.push(d.to_path_buf());
        cur = d.parent();
    }
    for d in missing.iter().rev() {
        match fs::create_dir(d) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(ctx(|| format!("creating {}", d.display()))(e)),
        }
        if let Some(parent) = d.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent).map_err(ctx(|| format!("syncing {}", parent.display())))?;
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes, syncs and removes a file: whether the directory takes writes right now.
fn probe(dir: &Path) -> io::Result<()> {
    let path = dir.join(".probe");
    let result = (|| {
        let mut f = File::create(&path)?;
        f.write_all(b"probe")?;
        f.sync_all()
    })();
    let _ = fs::remove_file(&path);
    result
}

impl Spool {
    /// Opens (creating) the directories, checks that they take writes, recovers what is
    /// pending (in ID order) and starts the writer thread.
    pub fn open(dir: &Path, robot: &str) -> Result<(Spool, Recovered), Error> {
        let dirs = Dirs {
            queue: dir.join("queue"),
            ledger: dir.join("queue").join("released.ids"),
            failed: dir.join("failed"),
            corrupt: dir.join("corrupt"),
        };
        for d in [&dirs.queue, &dirs.failed, &dirs.corrupt] {
            create_dir_durable(d)?;
        }
        probe(&dirs.queue).map_err(ctx(|| format!("writing to {}", dirs.queue.display())))?;
        let mut files = Files::default();
        let recovered = recover(&dirs, &mut files)?;
        let first_free_id = files.file_of.keys().chain(&files.released).max().map_or(1, |m| m + 1);
        let shared = Arc::new(Shared {
            jobs: Mutex::new(Jobs::default()),
            wake: Condvar::new(),
            healthy: AtomicBool::new(true),
        });
        let s = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name(format!("spool-{robot}"))
            .spawn(move || write_loop(&s, &dirs, files))
            .map_err(ctx(|| "starting the spool writer thread".to_string()))?;
        Ok((Spool { shared, writer: Mutex::new(Some(writer)), first_free_id }, recovered))
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, Jobs> {
        self.shared.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes a record durable; returns once the batch holding it is fsynced. Safe to call
    /// from a coroutine (it yields while waiting).
    pub fn commit(&self, id: u64, created_unix: u64, body: &[u8]) -> Result<(), String> {
        let (tx, rx) = may::sync::mpsc::channel();
        {
            let mut jobs = self.jobs();
            if jobs.stop {
                return Err("the spool is closed".into());
            }
            jobs.writes.push(WriteJob { id, frame: frame_v2(id, created_unix, body), done: tx });
        }
        self.shared.wake.notify_one();
        rx.recv().unwrap_or_else(|_| Err("the spool writer stopped".into()))
    }

    /// The lowest ID a new record may take.
    pub fn first_free_id(&self) -> u64 {
        self.first_free_id
    }

    /// Deletes a record (its file once every record in it is gone). Does not wait: a lost
    /// delete only means one resend after a crash.
    pub fn remove(&self, id: u64) {
        self.jobs().removes.push(id);
        self.shared.wake.notify_one();
    }

    /// Keeps a message WeCom refused for good, for a human to read. Does not wait.
    pub fn keep_failed(&self, text: String) {
        self.jobs().failed.push(text);
        self.shared.wake.notify_one();
    }

    /// False while the last write failed (read-only, full disk); the writer probes again
    /// every few seconds.
    pub fn healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::Relaxed)
    }

    /// Finishes what is queued (deletes included) and stops the writer.
    pub fn close(&self) {
        self.jobs().stop = true;
        self.shared.wake.notify_all();
        let handle = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        self.close();
    }
}

fn write_loop(shared: &Shared, dirs: &Dirs, mut files: Files) {
    let mut failed_seq: u64 = 0;
    loop {
        let jobs = {
            let mut jobs = shared.jobs.lock().unwrap_or_else(|p| p.into_inner());
            while jobs.writes.is_empty()
                && jobs.removes.is_empty()
                && jobs.failed.is_empty()
                && !jobs.stop
            {
                let unhealthy = !shared.healthy.load(Ordering::Relaxed);
                let wait =
                    if unhealthy { Duration::from_secs(2) } else { Duration::from_secs(3600) };
                let (guard, timeout) =
                    shared.wake.wait_timeout(jobs, wait).unwrap_or_else(|p| p.into_inner());
                jobs = guard;
                if timeout.timed_out() && unhealthy && probe(&dirs.queue).is_ok() {
                    log::info!("spool takes writes again dir={}", dirs.queue.display());
                    shared.healthy.store(true, Ordering::Relaxed);
                }
            }
            let taken = std::mem::take(&mut *jobs);
            // Stopping is for good: later commits must still see it.
            jobs.stop = taken.stop;
            taken
        };
        if !jobs.writes.is_empty() {
            let first = jobs.writes[0].id;
            let path = dirs.queue.join(format!("{first:020}.rec"));
            let mut bytes = Vec::new();
            for w in &jobs.writes {
                bytes.extend_from_slice(&w.frame);
            }
            let result = write_durable(&dirs.queue, &path, &bytes);
            let answer = match &result {
                Ok(()) => {
                    let ids: Vec<u64> = jobs.writes.iter().map(|w| w.id).collect();
                    files.add(first, path.clone(), &ids, &HashSet::new());
                    if !shared.healthy.swap(true, Ordering::Relaxed) {
                        log::info!("spool takes writes again dir={}", dirs.queue.display());
                    }
                    Ok(())
                }
                Err(e) => {
                    // These notifications are answered 503 (Alertmanager sends them again): a
                    // file renamed in place before the directory fsync failed must not be
                    // replayed too. Its name is this batch's own.
                    let _ = fs::remove_file(&path);
                    if shared.healthy.swap(false, Ordering::Relaxed) {
                        log::error!(
                            "writing the spool failed file={} error=\"{e}\"",
                            path.display()
                        );
                    }
                    Err(format!("writing the spool: {e}"))
                }
            };
            for w in jobs.writes {
                let _ = w.done.send(answer.clone());
            }
        }
        let mut to_ledger = String::new();
        let mut deleted = false;
        for id in jobs.removes {
            if let Some(path) = files.release(id, &mut to_ledger) {
                deleted = true;
                if let Err(e) = fs::remove_file(&path) {
                    if e.kind() != io::ErrorKind::NotFound {
                        log::error!(
                            "removing a delivered spool file={} error=\"{e}\"",
                            path.display()
                        );
                    }
                }
            }
        }
        if !to_ledger.is_empty() {
            if let Err(e) = append_ledger(&dirs.ledger, &to_ledger) {
                log::error!(
                    "recording delivered notifications file={} error=\"{e}\"",
                    dirs.ledger.display()
                );
            }
        }
        if deleted {
            if let Err(e) = files.compact_ledger(dirs, false) {
                log::error!("rewriting file={} error=\"{e}\"", dirs.ledger.display());
            }
        }
        let unix = unix_now();
        for text in jobs.failed {
            failed_seq += 1;
            let path =
                dirs.failed.join(format!("{unix}-{:06}-{failed_seq}.md", std::process::id()));
            if let Err(e) = fs::write(&path, text) {
                log::error!("keeping a failed message file={} error=\"{e}\"", path.display());
            }
        }
        if jobs.stop {
            return;
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// tmp, write, fsync, rename, fsync the directory.
fn write_durable(dir: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("rec.tmp");
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_data()?;
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn recover(dirs: &Dirs, files: &mut Files) -> Result<Recovered, Error> {
    let mut records = Vec::new();
    let mut corrupt = 0;
    let mut rewrite: Vec<Record> = Vec::new();
    let released =
        read_ledger(&dirs.ledger).map_err(ctx(|| format!("reading {}", dirs.ledger.display())))?;
    let entries =
        fs::read_dir(&dirs.queue).map_err(ctx(|| format!("reading {}", dirs.queue.display())))?;
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("").to_string();
        if name.ends_with(".tmp") {
            // Never acknowledged: Alertmanager still has it.
            let _ = fs::remove_file(&path);
            continue;
        }
        let v1 = name.ends_with(".item");
        if !v1 && !name.ends_with(".rec") {
            continue;
        }
        // A file that cannot be read is kept and the open fails with the reason: deleting it
        // would lose acknowledged notifications.
        let bytes = fs::read(&path).map_err(ctx(|| format!("reading {}", path.display())))?;
        let (good, bad) = if v1 {
            match decode_v1(&bytes) {
                Some(r) => (vec![r], false),
                None => (Vec::new(), true),
            }
        } else {
            decode_v2_frames(&bytes)
        };
        if bad {
            corrupt += 1;
            log::error!(
                "spool file is corrupt, moved aside file={} good_records={}",
                path.display(),
                good.len()
            );
            rewrite.extend(good.into_iter().filter(|r| !released.contains(&r.id())));
            if let Some(name) = path.file_name() {
                let _ = fs::rename(&path, dirs.corrupt.join(name));
            }
            continue;
        }
        let ids: Vec<u64> = good.iter().map(Record::id).collect();
        let pending: Vec<Record> =
            good.into_iter().filter(|r| !released.contains(&r.id())).collect();
        match ids.first() {
            Some(first) if !pending.is_empty() => files.add(*first, path.clone(), &ids, &released),
            _ => {
                let _ = fs::remove_file(&path);
            }
        }
        records.extend(pending);
    }
    // Good records from a corrupt file get a file of their own again.
    if !rewrite.is_empty() {
        let first = rewrite[0].id();
        let path = dirs.queue.join(format!("{first:020}.rec"));
        let mut bytes = Vec::new();
        for r in &rewrite {
            match r {
                Record::Body { id, created_unix, body } => {
                    bytes.extend(frame_v2(*id, *created_unix, body));
                }
                Record::Rendered { .. } => {}
            }
        }
        write_durable(&dirs.queue, &path, &bytes)
            .map_err(ctx(|| format!("writing {}", path.display())))?;
        let ids: Vec<u64> = rewrite.iter().map(Record::id).collect();
        files.add(first, path, &ids, &HashSet::new());
        records.extend(rewrite);
    }
    // Only IDs of files still there stay: the next ID may reuse a stale one.
    files.ledger_lines = released.len();
    files
        .compact_ledger(dirs, true)
        .map_err(ctx(|| format!("writing {}", dirs.ledger.display())))?;
    records.sort_by_key(Record::id);
    Ok(Recovered { records, corrupt })
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

fn frame_v2(id: u64, created_unix: u64, body: &[u8]) -> Vec<u8> {
    let mut payload = json!({"id": id, "created_unix": created_unix}).to_string().into_bytes();
    payload.push(b'\n');
    payload.extend_from_slice(body);
    let mut out = format!("{MAGIC_V2} {} {:016x}\n", payload.len(), fnv1a64(&payload)).into_bytes();
    out.extend_from_slice(&payload);
    out
}

/// One frame's header and checked payload; returns the payload and the rest.
fn frame<'a>(bytes: &'a [u8], magic: &str) -> Option<(&'a [u8], &'a [u8])> {
    let newline = bytes.iter().position(|&b| b == b'\n')?;
    let header = std::str::from_utf8(&bytes[..newline]).ok()?;
    let mut fields = header.split(' ');
    if fields.next()? != magic {
        return None;
    }
    let len: usize = fields.next()?.parse().ok()?;
    let sum = u64::from_str_radix(fields.next()?, 16).ok()?;
    let rest = &bytes[newline + 1..];
    if rest.len() < len {
        return None;
    }
    let (payload, rest) = rest.split_at(len);
    (fnv1a64(payload) == sum).then_some((payload, rest))
}

/// Every good frame, and whether a bad one was found (the rest of the file is unreadable).
fn decode_v2_frames(mut bytes: &[u8]) -> (Vec<Record>, bool) {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let Some((payload, rest)) = frame(bytes, MAGIC_V2) else {
            return (out, true);
        };
        let Some(newline) = payload.iter().position(|&b| b == b'\n') else {
            return (out, true);
        };
        let head: Option<Value> = serde_json::from_slice(&payload[..newline]).ok();
        let fields = head
            .as_ref()
            .and_then(|v| Some((v.get("id")?.as_u64()?, v.get("created_unix")?.as_u64()?)));
        let Some((id, created_unix)) = fields else {
            return (out, true);
        };
        out.push(Record::Body { id, created_unix, body: payload[newline + 1..].to_vec() });
        bytes = rest;
    }
    (out, false)
}

fn decode_v1(bytes: &[u8]) -> Option<Record> {
    let (payload, rest) = frame(bytes, MAGIC_V1)?;
    if !rest.is_empty() {
        return None;
    }
    let v: Value = serde_json::from_slice(payload).ok()?;
    let parts = v
        .get("parts")?
        .as_array()?
        .iter()
        .map(|s| s.as_str().map(str::to_string))
        .collect::<Option<Vec<String>>>()?;
    Some(Record::Rendered {
        id: v.get("id")?.as_u64()?,
        created_unix: v.get("created_unix")?.as_u64()?,
        parts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("wxr-spool-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn body(id: u64) -> Record {
        Record::Body {
            id,
            created_unix: 1_700_000_000,
            body: format!("{{\"n\":{id}}}").into_bytes(),
        }
    }

    fn commit(spool: &Spool, r: &Record) {
        if let Record::Body { id, created_unix, body } = r {
            assert_eq!(spool.commit(*id, *created_unix, body), Ok(()));
        }
    }

    #[test]
    fn round_trip_group_commit_and_order() -> Result<(), Error> {
        let dir = temp_dir("rt");
        let (spool, rec) = Spool::open(&dir, "t")?;
        assert!(rec.records.is_empty());
        let spool = Arc::new(spool);
        // Many committers at once: all durable, fewer files than records is allowed.
        let threads: Vec<_> = (1..=20)
            .map(|i| {
                let s = Arc::clone(&spool);
                std::thread::spawn(move || commit(&s, &body(i)))
            })
            .collect();
        for t in threads {
            let _ = t.join();
        }
        spool.remove(3);
        spool.close();
        let (_, rec) = Spool::open(&dir, "t")?;
        let expected: Vec<Record> = (1..=20).filter(|i| *i != 3).map(body).collect();
        // A file goes only when all its records went, so 3 may survive with its batch.
        let got: Vec<Record> = rec.records.into_iter().filter(|r| r.id() != 3).collect();
        assert_eq!(got, expected);
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }

    /// Commits records as one group-commit batch (one file), as concurrent intake does.
    fn commit_batch(spool: &Spool, records: &[Record]) {
        let mut waits = Vec::new();
        {
            let mut jobs = spool.jobs();
            for r in records {
                if let Record::Body { id, created_unix, body } = r {
                    let (tx, rx) = may::sync::mpsc::channel();
                    let frame = frame_v2(*id, *created_unix, body);
                    jobs.writes.push(WriteJob { id: *id, frame, done: tx });
                    waits.push(rx);
                }
            }
        }
        spool.shared.wake.notify_one();
        for rx in waits {
            assert_eq!(rx.recv().ok(), Some(Ok(())));
        }
    }

    #[test]
    fn released_records_of_a_pending_file_are_not_replayed() -> Result<(), Error> {
        let dir = temp_dir("ledger");
        let (spool, _) = Spool::open(&dir, "t")?;
        // 1 (a firing) shares a file with 2, still pending; 3 (its resolved) has its own.
        commit_batch(&spool, &[body(1), body(2)]);
        commit(&spool, &body(3));
        spool.remove(1);
        spool.remove(3);
        spool.close();
        let (spool, rec) = Spool::open(&dir, "t")?;
        assert_eq!(rec.records, vec![body(2)]);
        // Still skipped after a second restart, and gone with its file.
        spool.close();
        let (spool, rec) = Spool::open(&dir, "t")?;
        assert_eq!(rec.records, vec![body(2)]);
        spool.remove(2);
        spool.close();
        assert_eq!(fs::read_dir(dir.join("queue")).map(|d| d.count()).unwrap_or(9), 0);
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn new_ids_start_above_a_released_record_still_on_disk() -> Result<(), Error> {
        let dir = temp_dir("ledger-ids");
        let (spool, _) = Spool::open(&dir, "t")?;
        commit_batch(&spool, &[body(1), body(2)]);
        spool.remove(2);
        spool.close();
        let (spool, rec) = Spool::open(&dir, "t")?;
        assert_eq!(rec.records, vec![body(1)]);
        // 2 is in the ledger: a new record 2 would be skipped at the next start.
        assert_eq!(spool.first_free_id(), 3);
        commit(&spool, &body(3));
        spool.close();
        let (_, rec) = Spool::open(&dir, "t")?;
        assert_eq!(rec.records, vec![body(1), body(3)]);
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn removing_every_record_of_a_file_deletes_it() -> Result<(), Error> {
        let dir = temp_dir("rm");
        let (spool, _) = Spool::open(&dir, "t")?;
        commit(&spool, &body(1));
        commit(&spool, &body(2));
        spool.remove(1);
        spool.remove(2);
        spool.close();
        assert_eq!(fs::read_dir(dir.join("queue")).map(|d| d.count()).unwrap_or(9), 0);
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn corrupt_files_are_moved_aside_and_counted() -> Result<(), Error> {
        let dir = temp_dir("corrupt");
        let (spool, _) = Spool::open(&dir, "t")?;
        for i in 1..=3 {
            commit(&spool, &body(i));
        }
        spool.close();
        let p1 = dir.join(format!("queue/{:020}.rec", 1));
        let mut b = fs::read(&p1).unwrap_or_default();
        let last = b.len() - 3;
        b[last] ^= 0x20;
        let _ = fs::write(&p1, b);
        let p2 = dir.join(format!("queue/{:020}.rec", 2));
        let b = fs::read(&p2).unwrap_or_default();
        let _ = fs::write(&p2, &b[..b.len() / 2]);
        let _ = fs::write(dir.join("queue/00000000000000000009.rec.tmp"), b"half");
        let (_, rec) = Spool::open(&dir, "t")?;
        assert_eq!(rec.records, vec![body(3)]);
        assert_eq!(rec.corrupt, 2);
        assert_eq!(fs::read_dir(dir.join("corrupt")).map(|d| d.count()).unwrap_or(0), 2);
        assert!(!dir.join("queue/00000000000000000009.rec.tmp").exists());
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn an_unreadable_file_fails_the_open_and_is_kept() -> Result<(), Error> {
        let dir = temp_dir("unreadable");
        let (spool, _) = Spool::open(&dir, "t")?;
        commit(&spool, &body(1));
        spool.close();
        // A name that reads as an error (a directory; permissions do not stop root).
        let odd = dir.join(format!("queue/{:020}.rec", 2));
        fs::create_dir(&odd).map_err(ctx(|| "mkdir".into()))?;
        let opened = Spool::open(&dir, "t");
        let err = opened.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.starts_with("reading ") && err.contains(".rec"), "{err}");
        assert!(odd.exists());
        assert!(dir.join(format!("queue/{:020}.rec", 1)).exists());
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn version_1_files_are_read() -> Result<(), Error> {
        let dir = temp_dir("v1");
        fs::create_dir_all(dir.join("queue")).map_err(ctx(|| "mkdir".into()))?;
        let payload = r###"{"id":5,"group_key":"g","identities":["a"],"alerts":1,"parts":["## x","y"],"created_unix":7}"###;
        let file =
            format!("WXR1 {} {:016x}\n{payload}", payload.len(), fnv1a64(payload.as_bytes()));
        fs::write(dir.join("queue/00000000000000000005.item"), file).map_err(ctx(|| "w".into()))?;
        let (spool, rec) = Spool::open(&dir, "t")?;
        assert_eq!(
            rec.records,
            vec![Record::Rendered {
                id: 5,
                created_unix: 7,
                parts: vec!["## x".into(), "y".into()]
            }]
        );
        spool.remove(5);
        spool.close();
        assert!(!dir.join("queue/00000000000000000005.item").exists());
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }
}
