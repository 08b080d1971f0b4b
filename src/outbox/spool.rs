//! The on-disk outbox: accepted notifications as Alertmanager sent them, appended to segment
//! files by one writer thread per spool with group commit, deleted once nothing pending refers
//! to them.
//!
//! # Invariants
//! - A notification is acknowledged (HTTP 200) only after the data holding it is durable. The
//!   writer takes every record waiting, writes them after the open segment's data with one
//!   `write` (over zeros written ahead, see `ZERO_AHEAD`), runs one `fdatasync`, and only then
//!   wakes every waiter of that batch. A segment's directory entry is fsynced once, when the
//!   segment is created, before its first batch is answered; later batches need no directory
//!   fsync (they only change the file, whose size and blocks `fdatasync` makes durable too).
//!   A segment is closed for writing once its data reaches `SEGMENT_BYTES`; segments found at
//!   start are never written again.
//! - A failed write or `fdatasync` answers the whole batch with an error (503: Alertmanager
//!   sends it again). The segment is cut back to its last good length, the batch's IDs go to
//!   the ledger (bytes that reached the disk anyway are not replayed) and the segment is closed
//!   for writing: nothing is appended after bytes whose fate is unknown. A new segment whose
//!   first batch failed is deleted.
//! - Intake waits for the writer with `may`'s channel (a coroutine yields, it does not block its
//!   worker); no disk work runs on a coroutine or under the outbox lock.
//! - A segment is deleted when every record in it was released by the queue (delivered,
//!   replaced by a newer state or given up) and it is closed for writing, or it is the open one
//!   and the writer has had nothing to do for `IDLE_CLOSE` (so an idle relay leaves `queue/`
//!   empty, and a busy one does not pay a directory fsync per batch for a new file).
//!   At-least-once: a crash between send and delete resends. A record released while its
//!   segment stays is appended to the ledger `queue/released.ids` (one ID a line, not fsynced:
//!   a lost line only means one resend), and recovery skips it: a restart never replays what was
//!   delivered. The ledger is rewritten at open and when mostly stale, and removed once no
//!   segment holds a released record.
//! - Record IDs are monotonic: recovery continues after the highest ID on disk and replays in
//!   ID order, which is arrival order. Directories created here are fsynced into their parents.
//!
//! # Format (version 2)
//! A segment `queue/<first ID, 20 digits>.rec` is a sequence of frames:
//! `WXR2 <payload length> <FNV-1a 64, 16 hex digits>\n`, then the payload: a JSON line
//! `{"id":N,"created_unix":T}\n` followed by the webhook body as received (Alertmanager's own
//! JSON, so a record is readable with any JSON tool). Zeros follow the data (written ahead
//! of it). A crash (kill -9, power loss) can leave a torn tail: after the last
//! whole frame, the beginning of a frame, then zeros. Nothing in it was acknowledged (the
//! `fdatasync` covering it never returned), so recovery ignores it, logs it and keeps every
//! frame before it. Files of the unreleased one-file-per-batch writer (same frames, no zeros)
//! read as segments.
//!
//! Version 1 (1.0.0): `queue/<id>.item`, one frame `WXR1 <len> <fnv>\n` + JSON
//! `{"id","group_key","identities","alerts","parts","created_unix"}` holding rendered messages.
//! Still read, and delivered as they are.
//!
//! # Recovery
//! Every file is read and each frame checked. A torn tail is ignored (above). Any other bad
//! frame (a whole frame whose checksum fails, a garbled header) means the file is damaged: the
//! reader goes on at the next frame that checks, the file is moved to `corrupt/` (its good
//! records are written again into a new segment first), counted and logged, and recovery goes
//! on. A file that cannot be read is kept and the open fails with the reason. Alerts WeCom
//! refused for good are kept in `failed/<unix>-<pid>-<n>.md`, one file per message, never
//! overwritten.
//!
//! Directory layout under a robot's directory: `queue/`, `failed/`, `corrupt/`.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde_json::Value;

const MAGIC_V1: &str = "WXR1";
const MAGIC_V2: &str = "WXR2";

/// Where a segment is closed for writing. Large enough that creating segments (one directory
/// fsync each) is rare under load, small enough that a record stuck in retry pins little disk.
const SEGMENT_BYTES: u64 = 1 << 20;

/// Zeros written after a segment's data, ahead of the batches to come: a batch written over
/// them changes neither the file's size nor its blocks, so its `fdatasync` has no metadata to
/// commit (0.15 ms instead of 0.19 ms for an append on the ext4 of BENCHMARKS.md, and fewer
/// slow ones). One batch in about a hundred writes the next zeros with its data.
const ZERO_AHEAD: u64 = 64 * 1024;

/// How long the writer waits, with nothing to do, before deleting an open segment whose
/// records were all released.
const IDLE_CLOSE: Duration = Duration::from_secs(1);

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
    /// Told the outcome once the batch is durable.
    done: may::sync::mpsc::Sender<Ack>,
}

/// A batch's outcome. The writer sends it to one waiter per `may` worker only, each with its
/// share of the other waiters' senders, and that waiter tells them: waking a coroutine from a
/// plain thread costs a write to a worker's eventfd each (the writer's largest cost under
/// load, strace showed), waking one from a coroutine is a push onto its worker's queue.
struct Ack {
    /// The text names no path (it may reach an HTTP answer).
    result: Result<(), String>,
    others: Vec<may::sync::mpsc::Sender<Ack>>,
}

/// Waits for a batch's outcome and passes it on to the waiters given with it.
fn wait_ack(rx: &may::sync::mpsc::Receiver<Ack>) -> Result<(), String> {
    let Ok(ack) = rx.recv() else {
        return Err("the spool writer stopped".into());
    };
    for tx in ack.others {
        let _ = tx.send(Ack { result: ack.result.clone(), others: Vec::new() });
    }
    ack.result
}

#[derive(Default)]
struct Jobs {
    writes: Vec<WriteJob>,
    removes: Vec<u64>,
    failed: Vec<String>,
    stop: bool,
    /// The writer waits on the condvar: only then is a notify needed (each costs a syscall).
    sleeping: bool,
}

impl Jobs {
    fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.removes.is_empty() && self.failed.is_empty()
    }
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
    /// Released records whose segment is still there (see the module doc).
    ledger: PathBuf,
    failed: PathBuf,
    corrupt: PathBuf,
}

impl Dirs {
    fn segment(&self, first_id: u64) -> PathBuf {
        self.queue.join(format!("{first_id:020}.rec"))
    }
}

struct Segment {
    path: PathBuf,
    /// Records not yet released.
    live: usize,
    /// Every record in it, to drop its released ones from the ledger when it goes.
    records: Vec<u64>,
}

/// The writer thread's own books: which segment holds which record. Segments are keyed by
/// their first record's ID (their name).
#[derive(Default)]
struct Files {
    segments: HashMap<u64, Segment>,
    segment_of: HashMap<u64, u64>,
    /// Released records whose segment is still there: what the ledger must hold.
    released: HashSet<u64>,
    /// Lines in the ledger file (grows until it is rewritten).
    ledger_lines: usize,
}

impl Files {
    /// Adds records to a segment (new or not); those in `released` are released already.
    fn add(&mut self, seg: u64, path: &Path, all: &[u64], released: &HashSet<u64>) {
        let s = self.segments.entry(seg).or_insert_with(|| Segment {
            path: path.to_path_buf(),
            live: 0,
            records: Vec::new(),
        });
        s.records.extend_from_slice(all);
        for &r in all {
            if released.contains(&r) {
                self.released.insert(r);
            } else {
                s.live += 1;
                self.segment_of.insert(r, seg);
            }
        }
    }

    /// Releases a pending record; returns its segment and whether nothing in it is pending
    /// any more. `None` for a record it does not know (already released, never written).
    fn release(&mut self, record: u64) -> Option<(u64, bool)> {
        let seg = self.segment_of.remove(&record)?;
        let s = self.segments.get_mut(&seg)?;
        s.live = s.live.saturating_sub(1);
        self.released.insert(record);
        Some((seg, s.live == 0))
    }

    fn live(&self, seg: u64) -> usize {
        self.segments.get(&seg).map_or(0, |s| s.live)
    }

    /// Forgets a segment and its released records; returns its path.
    fn drop_segment(&mut self, seg: u64) -> Option<PathBuf> {
        let s = self.segments.remove(&seg)?;
        for r in &s.records {
            self.released.remove(r);
            self.segment_of.remove(r);
        }
        Some(s.path)
    }

    /// Rewrites the ledger to what it must hold (removes it when nothing), once segments are
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
        Spool::open_with(
            dir,
            robot,
            Tuning { segment_bytes: SEGMENT_BYTES, idle_close: IDLE_CLOSE },
        )
    }

    fn open_with(dir: &Path, robot: &str, tuning: Tuning) -> Result<(Spool, Recovered), Error> {
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
        let first_free_id =
            files.segment_of.keys().chain(&files.released).max().map_or(1, |m| m + 1);
        let shared = Arc::new(Shared {
            jobs: Mutex::new(Jobs::default()),
            wake: Condvar::new(),
            healthy: AtomicBool::new(true),
        });
        let s = Arc::clone(&shared);
        let writer = Writer {
            dirs,
            files,
            active: None,
            ledger: None,
            tuning,
            deleted: false,
            failed_seq: 0,
        };
        let writer = std::thread::Builder::new()
            .name(format!("spool-{robot}"))
            .spawn(move || write_loop(&s, writer))
            .map_err(ctx(|| "starting the spool writer thread".to_string()))?;
        Ok((Spool { shared, writer: Mutex::new(Some(writer)), first_free_id }, recovered))
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, Jobs> {
        self.shared.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands work to the writer, waking it only when it sleeps.
    fn push(&self, add: impl FnOnce(&mut Jobs)) {
        let wake = {
            let mut jobs = self.jobs();
            add(&mut jobs);
            std::mem::take(&mut jobs.sleeping)
        };
        if wake {
            self.shared.wake.notify_one();
        }
    }

    /// Makes a record durable; returns once the batch holding it is fsynced. Safe to call
    /// from a coroutine (it yields while waiting).
    pub fn commit(&self, id: u64, created_unix: u64, body: &[u8]) -> Result<(), String> {
        let (tx, rx) = may::sync::mpsc::channel();
        let frame = frame_v2(id, created_unix, body);
        let wake = {
            let mut jobs = self.jobs();
            if jobs.stop {
                return Err("the spool is closed".into());
            }
            jobs.writes.push(WriteJob { id, frame, done: tx });
            std::mem::take(&mut jobs.sleeping)
        };
        if wake {
            self.shared.wake.notify_one();
        }
        wait_ack(&rx)
    }

    /// The lowest ID a new record may take.
    pub fn first_free_id(&self) -> u64 {
        self.first_free_id
    }

    /// Releases a record (its segment goes once every record in it is gone). Does not wait:
    /// a lost release only means one resend after a crash.
    pub fn remove(&self, id: u64) {
        self.push(|jobs| jobs.removes.push(id));
    }

    /// Keeps a message WeCom refused for good, for a human to read. Does not wait.
    pub fn keep_failed(&self, text: String) {
        self.push(|jobs| jobs.failed.push(text));
    }

    /// False while the last write failed (read-only, full disk); the writer probes again
    /// every few seconds.
    pub fn healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::Relaxed)
    }

    /// Finishes what is queued (releases included) and stops the writer.
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

/// Sizes and times of the writer (constants but in tests).
#[derive(Clone, Copy)]
struct Tuning {
    segment_bytes: u64,
    idle_close: Duration,
}

/// The segment being appended to.
struct Active {
    seg: u64,
    file: File,
    /// Bytes known good (written and synced).
    len: u64,
    /// Where the zeros written ahead of the data end.
    zeroed: u64,
}

/// The writer thread's state: all disk work of one spool happens here.
struct Writer {
    dirs: Dirs,
    files: Files,
    active: Option<Active>,
    /// The ledger, open for appending (reopened after it is rewritten).
    ledger: Option<File>,
    tuning: Tuning,
    /// A segment was deleted since the ledger was last compacted.
    deleted: bool,
    failed_seq: u64,
}

impl Writer {
    /// Appends one batch and makes it durable.
    fn append(&mut self, ids: &[u64], bytes: &[u8]) -> io::Result<()> {
        let created = self.active.is_none();
        if created {
            let seg = ids.first().copied().unwrap_or(0);
            let file =
                OpenOptions::new().write(true).create_new(true).open(self.dirs.segment(seg))?;
            self.active = Some(Active { seg, file, len: 0, zeroed: 0 });
        }
        let Some(a) = self.active.as_mut() else {
            return Err(io::Error::other("no open segment"));
        };
        let path = self.dirs.segment(a.seg);
        let queue = &self.dirs.queue;
        let end = a.len + bytes.len() as u64;
        let zero_to = end.max((end + ZERO_AHEAD).min(self.tuning.segment_bytes));
        let result = (|| {
            if end <= a.zeroed {
                a.file.write_all_at(bytes, a.len)?;
            } else {
                let mut buf = bytes.to_vec();
                buf.resize(bytes.len() + (zero_to - end) as usize, 0);
                a.file.write_all_at(&buf, a.len)?;
            }
            a.file.sync_data()?;
            if created {
                sync_dir(queue)?;
            }
            Ok(())
        })();
        let (seg, len) = (a.seg, a.len);
        match result {
            Ok(()) => {
                a.len = end;
                a.zeroed = a.zeroed.max(zero_to);
                let full = a.len >= self.tuning.segment_bytes;
                self.files.add(seg, &path, ids, &HashSet::new());
                if full {
                    self.close_active();
                }
                Ok(())
            }
            Err(e) if created => {
                // Only this batch is in it, and every one of its waiters gets an error.
                self.active = None;
                let _ = fs::remove_file(&path);
                Err(e)
            }
            Err(e) => {
                let _ = a.file.set_len(len);
                let failed: HashSet<u64> = ids.iter().copied().collect();
                self.files.add(seg, &path, ids, &failed);
                self.append_ledger(ids);
                self.close_active();
                Err(e)
            }
        }
    }

    /// Appends a batch and tells its waiters.
    fn write_batch(&mut self, shared: &Shared, writes: Vec<WriteJob>) {
        let ids: Vec<u64> = writes.iter().map(|w| w.id).collect();
        let mut bytes = Vec::with_capacity(writes.iter().map(|w| w.frame.len()).sum());
        for w in &writes {
            bytes.extend_from_slice(&w.frame);
        }
        let answer = match self.append(&ids, &bytes) {
            Ok(()) => {
                if !shared.healthy.swap(true, Ordering::Relaxed) {
                    log::info!("spool takes writes again dir={}", self.dirs.queue.display());
                }
                Ok(())
            }
            Err(e) => {
                // Answered 503: Alertmanager sends these notifications again.
                if shared.healthy.swap(false, Ordering::Relaxed) {
                    log::error!(
                        "writing the spool failed dir={} error=\"{e}\"",
                        self.dirs.queue.display()
                    );
                }
                Err(format!("writing the spool: {e}"))
            }
        };
        // One group per `may` worker: a coroutine woken from a plain thread goes to the workers
        // in turn, and each group's first waiter wakes the rest on its own worker.
        let groups = may::config().get_workers().max(1);
        let per_group = writes.len().div_ceil(groups).max(1);
        let mut waiters = writes.into_iter().map(|w| w.done);
        loop {
            let mut group = waiters.by_ref().take(per_group);
            let Some(first) = group.next() else { break };
            let others = group.collect();
            let _ = first.send(Ack { result: answer.clone(), others });
        }
    }

    /// Stops writing to the open segment; deletes it when nothing in it is pending.
    fn close_active(&mut self) {
        if let Some(a) = self.active.take() {
            if self.files.live(a.seg) == 0 {
                self.delete_segment(a.seg);
            }
        }
    }

    fn delete_segment(&mut self, seg: u64) {
        if let Some(path) = self.files.drop_segment(seg) {
            self.deleted = true;
            if let Err(e) = remove_if_there(&path) {
                log::error!("removing a delivered spool file={} error=\"{e}\"", path.display());
            }
        }
    }

    fn release(&mut self, removes: Vec<u64>) {
        let mut lines = Vec::new();
        let mut emptied = Vec::new();
        for id in removes {
            if let Some((seg, empty)) = self.files.release(id) {
                lines.push(id);
                if empty {
                    emptied.push(seg);
                }
            }
        }
        let open = self.active.as_ref().map(|a| a.seg);
        for seg in emptied {
            if Some(seg) != open && self.files.live(seg) == 0 {
                self.delete_segment(seg);
            }
        }
        // Only records whose segment stays need a line.
        lines.retain(|id| self.files.released.contains(id));
        self.append_ledger(&lines);
        self.compact();
    }

    /// Appends released IDs to the ledger. Not fsynced: a lost line only means one resend.
    fn append_ledger(&mut self, ids: &[u64]) {
        if ids.is_empty() {
            return;
        }
        let text: String = ids.iter().map(|id| format!("{id}\n")).collect();
        let path = &self.dirs.ledger;
        let result = match &mut self.ledger {
            Some(f) => f.write_all(text.as_bytes()),
            None => OpenOptions::new().create(true).append(true).open(path).and_then(|mut f| {
                f.write_all(text.as_bytes())?;
                self.ledger = Some(f);
                Ok(())
            }),
        };
        self.files.ledger_lines += ids.len();
        if let Err(e) = result {
            self.ledger = None;
            log::error!("recording delivered notifications file={} error=\"{e}\"", path.display());
        }
    }

    /// Rewrites the ledger once segments went (see `Files::compact_ledger`).
    fn compact(&mut self) {
        if !std::mem::take(&mut self.deleted) {
            return;
        }
        let lines = self.files.ledger_lines;
        if let Err(e) = self.files.compact_ledger(&self.dirs, false) {
            log::error!("rewriting file={} error=\"{e}\"", self.dirs.ledger.display());
        }
        if self.files.ledger_lines != lines {
            // Rewritten or removed: the open handle points at the old file.
            self.ledger = None;
        }
    }

    /// True when the open segment holds nothing pending.
    fn open_segment_idle(&self) -> bool {
        self.active.as_ref().is_some_and(|a| self.files.live(a.seg) == 0)
    }

    /// Deletes the open segment when nothing in it is pending (idle or stopping).
    fn close_if_idle(&mut self) {
        if self.open_segment_idle() {
            self.close_active();
            self.compact();
        }
    }

    fn keep_failed(&mut self, texts: Vec<String>) {
        let unix = unix_now();
        for text in texts {
            self.failed_seq += 1;
            let name = format!("{unix}-{:06}-{}.md", std::process::id(), self.failed_seq);
            let path = self.dirs.failed.join(name);
            if let Err(e) = fs::write(&path, text) {
                log::error!("keeping a failed message file={} error=\"{e}\"", path.display());
            }
        }
    }
}

/// Releases the writer may hold back while commits keep coming (see `write_loop`).
const MAX_DEFERRED_RELEASES: usize = 4096;

fn write_loop(shared: &Shared, mut w: Writer) {
    let mut deferred: Vec<u64> = Vec::new();
    loop {
        let mut idle = false;
        let jobs = {
            let mut jobs = shared.jobs.lock().unwrap_or_else(|p| p.into_inner());
            while jobs.is_empty() && !jobs.stop {
                let unhealthy = !shared.healthy.load(Ordering::Relaxed);
                let closing = w.open_segment_idle();
                let wait = if unhealthy {
                    Duration::from_secs(2)
                } else if closing {
                    w.tuning.idle_close
                } else {
                    Duration::from_secs(3600)
                };
                jobs.sleeping = true;
                let (guard, timeout) =
                    shared.wake.wait_timeout(jobs, wait).unwrap_or_else(|p| p.into_inner());
                jobs = guard;
                jobs.sleeping = false;
                if timeout.timed_out() {
                    if unhealthy && probe(&w.dirs.queue).is_ok() {
                        log::info!("spool takes writes again dir={}", w.dirs.queue.display());
                        shared.healthy.store(true, Ordering::Relaxed);
                    }
                    if closing && jobs.is_empty() && !jobs.stop {
                        idle = true;
                        break;
                    }
                }
            }
            let taken = std::mem::take(&mut *jobs);
            // Stopping is for good: later commits must still see it.
            jobs.stop = taken.stop;
            taken
        };
        if idle {
            w.close_if_idle();
            continue;
        }
        let wrote = !jobs.writes.is_empty();
        if wrote {
            w.write_batch(shared, jobs.writes);
        }
        // Commits first: while the next batch already waits, releases (never waited for)
        // wait instead, up to a bound, so fdatasyncs follow each other closely under load.
        deferred.extend(jobs.removes);
        let busy = wrote
            && !jobs.stop
            && deferred.len() < MAX_DEFERRED_RELEASES
            && !shared.jobs.lock().unwrap_or_else(|p| p.into_inner()).writes.is_empty();
        if !busy {
            w.release(std::mem::take(&mut deferred));
        }
        w.keep_failed(jobs.failed);
        if jobs.stop {
            w.close_if_idle();
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
        let scan = if v1 {
            match decode_v1(&bytes) {
                Some(r) => Scan { records: vec![r], torn_bytes: 0, damaged: false },
                None => Scan { records: Vec::new(), torn_bytes: 0, damaged: true },
            }
        } else {
            scan_segment(&bytes)
        };
        if scan.damaged {
            corrupt += 1;
            log::error!(
                "spool file is corrupt, moved aside file={} good_records={}",
                path.display(),
                scan.records.len()
            );
            rewrite.extend(scan.records.into_iter().filter(|r| !released.contains(&r.id())));
            if let Some(name) = path.file_name() {
                let _ = fs::rename(&path, dirs.corrupt.join(name));
            }
            continue;
        }
        if scan.torn_bytes > 0 {
            log::warn!(
                "spool file ends in a partial record (never acknowledged), ignored file={} \
                 bytes={} good_records={}",
                path.display(),
                scan.torn_bytes,
                scan.records.len()
            );
        }
        let ids: Vec<u64> = scan.records.iter().map(Record::id).collect();
        let pending: Vec<Record> =
            scan.records.into_iter().filter(|r| !released.contains(&r.id())).collect();
        match ids.first() {
            Some(first) if !pending.is_empty() => files.add(*first, &path, &ids, &released),
            _ => {
                let _ = fs::remove_file(&path);
            }
        }
        records.extend(pending);
    }
    // Good records from a corrupt file get a segment of their own again.
    if !rewrite.is_empty() {
        let first = rewrite[0].id();
        let path = dirs.segment(first);
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
        files.add(first, &path, &ids, &HashSet::new());
        records.extend(rewrite);
    }
    // Only IDs of segments still there stay: the next ID may reuse a stale one.
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
    let head = format!("{{\"id\":{id},\"created_unix\":{created_unix}}}\n");
    let mut payload = Vec::with_capacity(head.len() + body.len());
    payload.extend_from_slice(head.as_bytes());
    payload.extend_from_slice(body);
    let mut out = format!("{MAGIC_V2} {} {:016x}\n", payload.len(), fnv1a64(&payload)).into_bytes();
    out.reserve(payload.len());
    out.extend_from_slice(&payload);
    out
}

/// Why a frame could not be read.
#[derive(Debug, PartialEq, Eq)]
enum BadFrame {
    /// The bytes are the beginning of a frame (a write cut short).
    Short,
    /// Anything else: a garbled header, a checksum that fails.
    Damaged,
}

/// The longest header: magic, a 20-digit length, 16 hex digits, spaces.
const MAX_HEADER: usize = 4 + 1 + 20 + 1 + 16;

/// One frame's header and checked payload; returns the payload and the rest.
fn frame<'a>(bytes: &'a [u8], magic: &str) -> Result<(&'a [u8], &'a [u8]), BadFrame> {
    let Some(newline) = bytes.iter().take(MAX_HEADER + 1).position(|&b| b == b'\n') else {
        // The beginning of a header, cut before its newline?
        let n = bytes.len().min(magic.len());
        let header_like = bytes.len() <= MAX_HEADER
            && bytes[..n] == magic.as_bytes()[..n]
            && bytes[n..].iter().all(|b| *b == b' ' || b.is_ascii_hexdigit());
        return Err(if header_like { BadFrame::Short } else { BadFrame::Damaged });
    };
    let header = std::str::from_utf8(&bytes[..newline]).map_err(|_| BadFrame::Damaged)?;
    let mut fields = header.split(' ');
    let (Some(m), Some(len), Some(sum), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(BadFrame::Damaged);
    };
    let len: usize = len.parse().map_err(|_| BadFrame::Damaged)?;
    let sum = u64::from_str_radix(sum, 16).map_err(|_| BadFrame::Damaged)?;
    if m != magic {
        return Err(BadFrame::Damaged);
    }
    let rest = &bytes[newline + 1..];
    if rest.len() < len {
        return Err(BadFrame::Short);
    }
    let (payload, rest) = rest.split_at(len);
    if fnv1a64(payload) != sum {
        return Err(BadFrame::Damaged);
    }
    Ok((payload, rest))
}

/// One version-2 record from its checked payload.
fn decode_v2(payload: &[u8]) -> Option<Record> {
    let newline = payload.iter().position(|&b| b == b'\n')?;
    let head: Value = serde_json::from_slice(&payload[..newline]).ok()?;
    Some(Record::Body {
        id: head.get("id")?.as_u64()?,
        created_unix: head.get("created_unix")?.as_u64()?,
        body: payload[newline + 1..].to_vec(),
    })
}

/// What a segment holds.
#[derive(Debug, PartialEq, Eq)]
struct Scan {
    /// Every good record, in file order.
    records: Vec<Record>,
    /// Bytes of a partial frame at the end (ignored: never acknowledged), zeros aside.
    torn_bytes: usize,
    /// A bad frame other than a torn tail was found.
    damaged: bool,
}

/// Reads every good frame of a segment. A bad frame is either a torn tail (the beginning of
/// a frame and then only zeros up to the end) or damage, after which reading goes on at the
/// next frame that checks.
fn scan_segment(bytes: &[u8]) -> Scan {
    let mut scan = Scan { records: Vec::new(), torn_bytes: 0, damaged: false };
    let mut rest = bytes;
    while !rest.is_empty() {
        let bad = match frame(rest, MAGIC_V2) {
            Ok((payload, next)) => match decode_v2(payload) {
                Some(r) => {
                    scan.records.push(r);
                    rest = next;
                    continue;
                }
                None => BadFrame::Damaged,
            },
            Err(bad) => bad,
        };
        let next = next_good_frame(rest);
        // A torn tail has nothing good after it (a length field rotted into a "short" frame
        // mid-file does). Zeros after the data were written ahead of it.
        let data = &rest[..rest.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1)];
        let partial = data.is_empty() || frame(data, MAGIC_V2) == Err(BadFrame::Short);
        if next.is_empty() && (bad == BadFrame::Short || partial) {
            scan.torn_bytes = data.len();
            return scan;
        }
        scan.damaged = true;
        rest = next;
    }
    scan
}

/// The bytes from the next frame (after the first byte) that checks, or nothing.
fn next_good_frame(bytes: &[u8]) -> &[u8] {
    let magic = MAGIC_V2.as_bytes();
    (1..bytes.len())
        .filter(|&i| bytes[i..].starts_with(magic))
        .map(|i| &bytes[i..])
        .find(|b| frame(b, MAGIC_V2).ok().and_then(|(p, _)| decode_v2(p)).is_some())
        .unwrap_or(&[])
}

fn decode_v1(bytes: &[u8]) -> Option<Record> {
    let (payload, rest) = frame(bytes, MAGIC_V1).ok()?;
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

    /// The files in `queue/`, sorted by name.
    fn queue_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir.join("queue"))
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.sort();
        names
    }

    fn seg_name(id: u64) -> String {
        format!("{id:020}.rec")
    }

    /// Waits until the writer has done everything handed to it (releases are done after the
    /// batch is answered, so a commit returning says nothing about them).
    fn settle(spool: &Spool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            let jobs = spool.jobs();
            if jobs.is_empty() && jobs.sleeping {
                return;
            }
            drop(jobs);
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("the spool writer did not settle");
    }

    /// Never closes the open segment for idleness, so a test sees where records went.
    fn no_idle(segment_bytes: u64) -> Tuning {
        Tuning { segment_bytes, idle_close: Duration::from_secs(3600) }
    }

    #[test]
    fn round_trip_group_commit_and_order() -> Result<(), Error> {
        let dir = temp_dir("rt");
        let (spool, rec) = Spool::open(&dir, "t")?;
        assert!(rec.records.is_empty());
        let spool = Arc::new(spool);
        // Many committers at once: all durable, in one segment.
        let threads: Vec<_> = (1..=20)
            .map(|i| {
                let s = Arc::clone(&spool);
                std::thread::spawn(move || commit(&s, &body(i)))
            })
            .collect();
        for t in threads {
            let _ = t.join();
        }
        assert_eq!(queue_files(&dir).iter().filter(|n| n.ends_with(".rec")).count(), 1);
        spool.remove(3);
        spool.close();
        let (_, rec) = Spool::open(&dir, "t")?;
        let expected: Vec<Record> = (1..=20).filter(|i| *i != 3).map(body).collect();
        assert_eq!(rec.records, expected);
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }

    /// Commits records as one group-commit batch, as concurrent intake does.
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
            assert_eq!(wait_ack(&rx), Ok(()));
        }
    }

    #[test]
    fn released_records_of_a_pending_segment_are_not_replayed() -> Result<(), Error> {
        let dir = temp_dir("ledger");
        let (spool, _) = Spool::open(&dir, "t")?;
        // 1 (a firing) shares a segment with 2, still pending, and with 3 (its resolved).
        commit_batch(&spool, &[body(1), body(2)]);
        commit(&spool, &body(3));
        spool.remove(1);
        spool.remove(3);
        spool.close();
        let (spool, rec) = Spool::open(&dir, "t")?;
        assert_eq!(rec.records, vec![body(2)]);
        // Still skipped after a second restart, and gone with its segment.
        spool.close();
        let (spool, rec) = Spool::open(&dir, "t")?;
        assert_eq!(rec.records, vec![body(2)]);
        spool.remove(2);
        spool.close();
        assert_eq!(queue_files(&dir), Vec::<String>::new());
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
        // A segment found at start is never written again: 3 has its own.
        assert_eq!(queue_files(&dir), vec![seg_name(1), seg_name(3), "released.ids".into()]);
        let (_, rec) = Spool::open(&dir, "t")?;
        assert_eq!(rec.records, vec![body(1), body(3)]);
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn removing_every_record_of_a_segment_deletes_it() -> Result<(), Error> {
        let dir = temp_dir("rm");
        let (spool, _) = Spool::open(&dir, "t")?;
        commit(&spool, &body(1));
        commit(&spool, &body(2));
        spool.remove(1);
        spool.remove(2);
        spool.close();
        assert_eq!(queue_files(&dir), Vec::<String>::new());
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }

    /// The open segment stays while the writer is busy (a new segment costs a directory
    /// fsync), and goes once the writer was idle for `idle_close`.
    #[test]
    fn an_open_segment_whose_records_all_went_is_reused_then_deleted_when_idle() -> Result<(), Error>
    {
        let dir = temp_dir("idle");
        let (spool, _) = Spool::open_with(&dir, "t", no_idle(1 << 20))?;
        commit(&spool, &body(1));
        spool.remove(1);
        settle(&spool);
        commit(&spool, &body(2));
        settle(&spool);
        assert_eq!(queue_files(&dir), vec![seg_name(1), "released.ids".into()]);
        spool.remove(2);
        spool.close();
        assert_eq!(queue_files(&dir), Vec::<String>::new());

        let tuning = Tuning { segment_bytes: 1 << 20, idle_close: Duration::from_millis(50) };
        let (spool, _) = Spool::open_with(&dir, "t", tuning)?;
        commit(&spool, &body(3));
        spool.remove(3);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !queue_files(&dir).is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(queue_files(&dir), Vec::<String>::new());
        // A new segment is opened for the next record.
        commit(&spool, &body(4));
        assert_eq!(queue_files(&dir), vec![seg_name(4)]);
        spool.close();
        let (_, rec) = Spool::open(&dir, "t")?;
        assert_eq!(rec.records, vec![body(4)]);
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn segments_rotate_at_their_size_and_go_when_released() -> Result<(), Error> {
        let dir = temp_dir("rotate");
        let frame_len = frame_v2(1, 1_700_000_000, b"{\"n\":1}").len() as u64;
        // Two records fill a segment.
        let (spool, _) = Spool::open_with(&dir, "t", no_idle(2 * frame_len))?;
        for i in 1..=5 {
            commit(&spool, &body(i));
        }
        assert_eq!(queue_files(&dir), vec![seg_name(1), seg_name(3), seg_name(5)]);
        // A closed segment goes with its last record; the open one (5) stays.
        spool.remove(1);
        spool.remove(2);
        spool.remove(5);
        spool.remove(3);
        settle(&spool);
        commit(&spool, &body(6));
        assert_eq!(
            queue_files(&dir),
            vec![seg_name(3), seg_name(5), "released.ids".into()],
            "6 joined segment 5"
        );
        // 5 and 3 are in the ledger; 1 or 2 may be too, when the writer took their release in
        // a batch of its own before segment 1 went (harmless: pruned at the next open).
        let ledger = fs::read_to_string(dir.join("queue/released.ids")).unwrap_or_default();
        let ids: std::collections::BTreeSet<&str> = ledger.lines().collect();
        assert!(ids.contains("5") && ids.contains("3"), "{ledger:?}");
        assert!(ids.iter().all(|id| ["1", "2", "3", "5"].contains(id)), "{ledger:?}");
        spool.remove(4);
        settle(&spool);
        commit(&spool, &body(7));
        assert_eq!(queue_files(&dir), vec![seg_name(5), seg_name(7), "released.ids".into()]);
        spool.close();
        let (spool, rec) = Spool::open(&dir, "t")?;
        assert_eq!(rec.records, vec![body(6), body(7)]);
        // At open the ledger holds only records of segments still there.
        assert_eq!(fs::read_to_string(dir.join("queue/released.ids")).ok(), Some("5\n".into()));
        spool.remove(6);
        spool.remove(7);
        spool.close();
        assert_eq!(queue_files(&dir), Vec::<String>::new());
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }

    /// Many committers and releases with segments rotating underneath: a clean restart
    /// replays exactly what was not released.
    #[test]
    fn concurrent_commits_and_releases_recover_exactly_the_pending_ones() -> Result<(), Error> {
        let dir = temp_dir("many");
        let (spool, _) = Spool::open_with(&dir, "t", no_idle(2048))?;
        let spool = Arc::new(spool);
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let s = Arc::clone(&spool);
                std::thread::spawn(move || {
                    for i in 0..50u64 {
                        let id = 1 + t * 50 + i;
                        commit(&s, &body(id));
                        if id % 3 != 0 {
                            s.remove(id);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            assert!(t.join().is_ok());
        }
        spool.close();
        assert!(queue_files(&dir).len() > 2, "segments rotated: {:?}", queue_files(&dir));
        let (_, rec) = Spool::open(&dir, "t")?;
        let expected: Vec<Record> = (1..=400).filter(|id| id % 3 == 0).map(body).collect();
        assert_eq!(rec.records, expected);
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }

    fn segment_bytes(ids: &[u64]) -> Vec<u8> {
        ids.iter()
            .flat_map(|id| frame_v2(*id, 1_700_000_000, format!("{{\"n\":{id}}}").as_bytes()))
            .collect()
    }

    /// kill -9 or power loss in the middle of a batch: whatever prefix of the last frame
    /// reached the file (or zeros), every frame before it is read and nothing is damaged.
    #[test]
    fn a_torn_tail_is_ignored_and_keeps_every_frame_before_it() {
        let whole = segment_bytes(&[1, 2, 3]);
        let two = segment_bytes(&[1, 2]).len();
        for cut in two + 1..whole.len() {
            let scan = scan_segment(&whole[..cut]);
            assert_eq!(scan.records, vec![body(1), body(2)], "cut at {cut}");
            assert_eq!((scan.torn_bytes, scan.damaged), (cut - two, false), "cut at {cut}");
        }
        // The same with the zeros written ahead of the data.
        for cut in two + 1..whole.len() {
            let mut padded = whole[..cut].to_vec();
            padded.extend([0; 4096]);
            let scan = scan_segment(&padded);
            assert_eq!(scan.records, vec![body(1), body(2)], "cut at {cut}");
            assert_eq!((scan.torn_bytes, scan.damaged), (cut - two, false), "cut at {cut}");
        }
        let mut zeros = whole.clone();
        zeros.extend([0; 4096]);
        let scan = scan_segment(&zeros);
        assert_eq!(scan.records, vec![body(1), body(2), body(3)]);
        assert_eq!((scan.torn_bytes, scan.damaged), (0, false));
        assert_eq!(scan_segment(&whole), scan);
        // Zeros then a frame is no torn tail: something after a hole checks.
        let mut hole = segment_bytes(&[1]);
        hole.extend([0; 100]);
        hole.extend(segment_bytes(&[2]));
        let scan = scan_segment(&hole);
        assert_eq!((scan.records, scan.damaged), (vec![body(1), body(2)], true));
    }

    /// Damage is not a torn tail: a rotted byte or length mid-file is reported, and reading
    /// goes on after it.
    #[test]
    fn damage_mid_segment_is_reported_and_the_frames_after_it_are_read() {
        let whole = segment_bytes(&[1, 2, 3]);
        let second = segment_bytes(&[1]).len();
        // A payload byte of frame 2.
        let mut rotted = whole.clone();
        let at = second + segment_bytes(&[2]).len() - 3;
        rotted[at] ^= 0x20;
        let scan = scan_segment(&rotted);
        assert_eq!(scan.records, vec![body(1), body(3)]);
        assert!(scan.damaged);
        // Frame 2's length grown past the end of the file: it looks short, but a good frame
        // follows, so it is damage and 3 is still read.
        let header_end = second + whole[second..].iter().position(|&b| b == b'\n').unwrap_or(0);
        let header = String::from_utf8_lossy(&whole[second..header_end]).into_owned();
        let mut fields: Vec<String> = header.split(' ').map(String::from).collect();
        fields[1] = format!("9{}", fields[1]);
        let mut grown = whole[..second].to_vec();
        grown.extend(fields.join(" ").into_bytes());
        grown.extend(&whole[header_end..]);
        let scan = scan_segment(&grown);
        assert_eq!(scan.records, vec![body(1), body(3)]);
        assert!(scan.damaged);
        // Garbage at the end is not the beginning of a frame.
        let mut junk = whole.clone();
        junk.extend(b"hello world\n");
        let scan = scan_segment(&junk);
        assert_eq!(scan.records.len(), 3);
        assert!(scan.damaged);
    }

    #[test]
    fn a_torn_segment_is_recovered_in_place() -> Result<(), Error> {
        let dir = temp_dir("torn");
        let (spool, _) = Spool::open(&dir, "t")?;
        for i in 1..=3 {
            commit(&spool, &body(i));
        }
        spool.close();
        let path = dir.join("queue").join(seg_name(1));
        let mut bytes = fs::read(&path).unwrap_or_default();
        let end = segment_bytes(&[1, 2, 3]).len();
        // The first batch wrote the zeros, the next two over them.
        assert_eq!(bytes.len() as u64, segment_bytes(&[1]).len() as u64 + ZERO_AHEAD);
        assert!(bytes[end..].iter().all(|&b| b == 0));
        bytes[end..end + 20].copy_from_slice(&segment_bytes(&[4])[..20]);
        fs::write(&path, &bytes).map_err(ctx(|| "w".into()))?;
        for _ in 0..2 {
            let (spool, rec) = Spool::open(&dir, "t")?;
            assert_eq!(rec.records, vec![body(1), body(2), body(3)]);
            assert_eq!(rec.corrupt, 0);
            spool.close();
        }
        assert_eq!(fs::read_dir(dir.join("corrupt")).map(|d| d.count()).unwrap_or(9), 0);
        let (spool, _) = Spool::open(&dir, "t")?;
        for i in 1..=3 {
            spool.remove(i);
        }
        spool.close();
        assert_eq!(queue_files(&dir), Vec::<String>::new());
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn corrupt_files_are_moved_aside_and_counted() -> Result<(), Error> {
        let dir = temp_dir("corrupt");
        let (spool, _) = Spool::open_with(&dir, "t", no_idle(1))?;
        for i in 1..=4 {
            commit(&spool, &body(i));
        }
        spool.close();
        // Segment size 1: one record each. 1 rots, 2 is garbage after its frame.
        let p1 = dir.join("queue").join(seg_name(1));
        let mut b = fs::read(&p1).unwrap_or_default();
        let last = b.len() - 3;
        b[last] ^= 0x20;
        let _ = fs::write(&p1, b);
        let p2 = dir.join("queue").join(seg_name(2));
        let mut b = fs::read(&p2).unwrap_or_default();
        b.extend(b"garbage\n");
        let _ = fs::write(&p2, b);
        let _ = fs::write(dir.join("queue/00000000000000000009.rec.tmp"), b"half");
        let (spool, rec) = Spool::open(&dir, "t")?;
        assert_eq!(rec.records, vec![body(2), body(3), body(4)]);
        assert_eq!(rec.corrupt, 2);
        assert_eq!(fs::read_dir(dir.join("corrupt")).map(|d| d.count()).unwrap_or(0), 2);
        assert!(!dir.join("queue/00000000000000000009.rec.tmp").exists());
        // 2's good frame was written again on its own.
        spool.close();
        let (_, rec) = Spool::open(&dir, "t")?;
        assert_eq!((rec.records.len(), rec.corrupt), (3, 0));
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
        let odd = dir.join("queue").join(seg_name(2));
        fs::create_dir(&odd).map_err(ctx(|| "mkdir".into()))?;
        let opened = Spool::open(&dir, "t");
        let err = opened.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.starts_with("reading ") && err.contains(".rec"), "{err}");
        assert!(odd.exists());
        assert!(dir.join("queue").join(seg_name(1)).exists());
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
        assert_eq!(spool.first_free_id(), 6);
        spool.remove(5);
        spool.close();
        assert!(!dir.join("queue/00000000000000000005.item").exists());
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }
}
