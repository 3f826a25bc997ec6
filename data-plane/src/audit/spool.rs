//! The audit spool: a bounded, append-only queue of audit events on the node's disk, from
//! the moment a request ends until the control plane acknowledges the event.
//!
//! # Format
//!
//! A folder of segment files named `<20-digit id>.seg`, written in id order. A segment
//! starts with a 16-byte header (`PCSPOOL\0`, format version as u32 LE, 4 reserved bytes)
//! followed by frames:
//!
//! ```text
//! u32 LE payload length | u32 LE CRC-32 of (length bytes ++ payload) | payload
//! ```
//!
//! The payload is one prost-encoded `portcullis.v1.AuditEvent` (its own schema evolves by
//! protobuf rules), at most [`MAX_FRAME_BYTES`] with the frame header. A frame with a zero
//! or oversized length or a wrong checksum ends its segment: that is where a write was torn
//! by a crash. A segment is never appended to after the process that wrote it stops; each
//! start opens a new one, so recovery never rewrites a file.
//!
//! A file `cursor` (segment id, offset, CRC) says up to where the control plane has
//! acknowledged. It is replaced by rename after each acknowledged batch and not fsynced: if
//! it is lost, delivery starts again from an older point and the control plane drops what
//! it already holds by event id. Segments wholly before the cursor are deleted.
//!
//! # Durability
//!
//! [`Spool::append`] writes the frame with one `write(2)` to the current segment, under a
//! mutex (the same cost as the log line the node writes per request), and returns its end
//! position. From then on the event survives a crash of the node process. A sync thread
//! makes it survive a crash of the machine:
//!
//! - [`FsyncPolicy::Always`]: the thread `fdatasync`s whenever something was written, every
//!   write made while one sync runs is covered by the next (group commit), and
//!   [`Spool::wait_durable`] resolves once the position is synced;
//! - [`FsyncPolicy::Interval`]: the thread syncs on a timer; [`Spool::wait_durable`]
//!   resolves at once, so a power loss can lose up to one interval of events.
//!
//! A failed `write` or `fdatasync` marks the spool failed for good (after a failed
//! `fdatasync` nobody can tell which pages reached the disk): every later append and every
//! wait fails, and the node reports not ready until it is restarted.
//!
//! # Bounds
//!
//! At most `max_bytes` of undelivered frames (on disk, plus at most one segment of
//! delivered frames waiting for its segment to be deleted). With [`FullPolicy::Refuse`]
//! every request reserves room for its event when it starts ([`Spool::reserve`]), so an
//! admitted request always has room; a request that finds no room is refused. With
//! [`FullPolicy::Drop`] requests are never refused and an event that finds no room is
//! dropped and counted.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;

/// Segment header: magic and format version.
const MAGIC: &[u8; 8] = b"PCSPOOL\0";
const FORMAT_VERSION: u32 = 1;
pub const HEADER_BYTES: u64 = 16;
/// Length and checksum before each payload.
const FRAME_HEADER_BYTES: usize = 8;
/// The largest frame, header included. Events are bounded field by field to fit (see
/// `event.rs`); this is also what a request reserves.
pub const MAX_FRAME_BYTES: usize = 4096;
pub const MAX_PAYLOAD_BYTES: usize = MAX_FRAME_BYTES - FRAME_HEADER_BYTES;
/// The smallest spool that makes sense: room for a few segments of events.
pub const MIN_MAX_BYTES: u64 = 64 * 1024;
const MIN_SEGMENT_BYTES: u64 = 16 * 1024;
const MAX_SEGMENT_BYTES: u64 = 16 * 1024 * 1024;
const CURSOR_FILE: &str = "cursor";
const CURSOR_TEMP_FILE: &str = "cursor.tmp";
const SEGMENT_SUFFIX: &str = ".seg";

/// When the spool forces its writes to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Before a request's event counts as durable (group commit).
    Always,
    /// On a timer; an event counts as durable once written.
    Interval(Duration),
}

/// What happens when the spool has no room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullPolicy {
    /// New requests are refused (503) until delivery makes room: nothing unaudited passes.
    Refuse,
    /// Requests are served; their events are dropped and counted.
    Drop,
}

impl FullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            FullPolicy::Refuse => "refuse",
            FullPolicy::Drop => "drop",
        }
    }
}

#[derive(Debug, Clone)]
pub struct SpoolOptions {
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub fsync: FsyncPolicy,
    pub when_full: FullPolicy,
}

impl SpoolOptions {
    /// An eighth of the spool, between 16 KiB and 16 MiB: small enough that delivered
    /// segments are deleted soon, large enough that files are few.
    pub fn segment_bytes(&self) -> u64 {
        (self.max_bytes / 8).clamp(MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("audit spool I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the audit spool is full")]
    Full,
    #[error("the audit spool failed earlier and accepts nothing until the node restarts")]
    Failed,
    #[error("the event is too large for a spool frame ({0} bytes)")]
    TooLarge(usize),
    #[error("segment {0} has an unknown header")]
    BadHeader(PathBuf),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A place in the spool: segment id, then byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

/// What the sync thread has made durable, or that it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Synced {
    position: Position,
    failed: bool,
}

/// A segment as the reader sees it.
#[derive(Debug, Clone, Copy)]
struct SegmentInfo {
    /// The end of its last valid frame once no more is written to it; `None` while it is
    /// the writer's segment.
    closed_end: Option<u64>,
}

struct Writer {
    file: Arc<File>,
    path: PathBuf,
    segment: u64,
    offset: u64,
    /// Segments closed since the last sync, still to be synced in full.
    unsynced_closed: Vec<Arc<File>>,
    /// A segment was created since the last sync: the folder must be synced too.
    folder_dirty: bool,
}

/// Counters of events that did not make it into the spool.
#[derive(Debug, Default)]
pub struct SpoolCounters {
    pub dropped_full: AtomicU64,
    pub dropped_failed: AtomicU64,
    pub refused_full: AtomicU64,
    pub corrupt_frames: AtomicU64,
}

struct Inner {
    options: SpoolOptions,
    segment_bytes: u64,
    writer: Mutex<Writer>,
    segments: Mutex<BTreeMap<u64, SegmentInfo>>,
    /// Bytes and events written but not acknowledged.
    undelivered_bytes: AtomicU64,
    undelivered_events: AtomicU64,
    /// Room promised to requests in flight (refuse policy).
    reserved_bytes: AtomicU64,
    synced: watch::Sender<Synced>,
    failed: AtomicBool,
    signal: Arc<SyncSignal>,
    counters: SpoolCounters,
}

/// How writers wake the sync thread. Separate from [`Inner`], which the thread holds only
/// weakly: when the last handle of the spool goes, the thread does a last sync and ends.
#[derive(Default)]
struct SyncSignal {
    /// `true` when something was written (or a stop asked) since the thread last looked.
    pending: Mutex<bool>,
    wakeup: Condvar,
    stop: AtomicBool,
}

impl SyncSignal {
    fn wake(&self) {
        let mut pending = lock(&self.pending);
        *pending = true;
        self.wakeup.notify_one();
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.signal.stop.store(true, Ordering::Release);
        self.signal.wake();
    }
}

/// The spool; cheap to clone.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.inner.options.dir)
            .finish_non_exhaustive()
    }
}

/// Room for one event, held from the start of a request until its event is appended.
pub struct Reservation {
    inner: Option<Arc<Inner>>,
}

impl Reservation {
    /// A reservation that holds nothing (drop policy, or no spool).
    pub fn none() -> Self {
        Self { inner: None }
    }
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("holds_room", &self.inner.is_some())
            .finish()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            inner
                .reserved_bytes
                .fetch_sub(MAX_FRAME_BYTES as u64, Ordering::AcqRel);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:020}{SEGMENT_SUFFIX}"))
}

fn frame_checksum(length: [u8; 4], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&length);
    hasher.update(payload);
    hasher.finalize()
}

/// Frames `payload` for a segment.
pub fn encode_frame(payload: &[u8]) -> Result<Vec<u8>, SpoolError> {
    if payload.is_empty() || payload.len() > MAX_PAYLOAD_BYTES {
        return Err(SpoolError::TooLarge(payload.len()));
    }
    let length = (payload.len() as u32).to_le_bytes();
    let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
    frame.extend_from_slice(&length);
    frame.extend_from_slice(&frame_checksum(length, payload).to_le_bytes());
    frame.extend_from_slice(payload);
    Ok(frame)
}

/// Reads frames from `bytes` (a segment's content from some frame boundary on). Returns the
/// payloads' ranges and where the valid frames end.
fn scan_frames(bytes: &[u8]) -> (Vec<std::ops::Range<usize>>, usize) {
    let mut frames = Vec::new();
    let mut at = 0usize;
    while bytes.len() - at >= FRAME_HEADER_BYTES {
        let length_bytes: [u8; 4] = bytes[at..at + 4].try_into().unwrap_or_default();
        let length = u32::from_le_bytes(length_bytes) as usize;
        let checksum = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap_or_default());
        if length == 0 || length > MAX_PAYLOAD_BYTES {
            break;
        }
        let start = at + FRAME_HEADER_BYTES;
        let Some(end) = start.checked_add(length).filter(|end| *end <= bytes.len()) else {
            break;
        };
        if frame_checksum(length_bytes, &bytes[start..end]) != checksum {
            break;
        }
        frames.push(start..end);
        at = end;
    }
    (frames, at)
}

fn write_header(file: &File, path: &Path) -> Result<(), SpoolError> {
    let mut header = [0u8; HEADER_BYTES as usize];
    header[..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    (&*file).write_all(&header).map_err(io_error(path))
}

fn check_header(bytes: &[u8], path: &Path) -> Result<(), SpoolError> {
    if bytes.len() < HEADER_BYTES as usize
        || &bytes[..8] != MAGIC
        || bytes[8..12] != FORMAT_VERSION.to_le_bytes()
    {
        return Err(SpoolError::BadHeader(path.to_path_buf()));
    }
    Ok(())
}

fn sync_folder(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|folder| folder.sync_all())
        .map_err(io_error(dir))
}

fn read_cursor(dir: &Path) -> Option<Position> {
    let bytes = std::fs::read(dir.join(CURSOR_FILE)).ok()?;
    if bytes.len() != 20 {
        return None;
    }
    let checksum = u32::from_le_bytes(bytes[16..20].try_into().ok()?);
    if crc32fast::hash(&bytes[..16]) != checksum {
        return None;
    }
    Some(Position {
        segment: u64::from_le_bytes(bytes[..8].try_into().ok()?),
        offset: u64::from_le_bytes(bytes[8..16].try_into().ok()?),
    })
}

fn write_cursor(dir: &Path, position: Position) -> Result<(), SpoolError> {
    let mut bytes = Vec::with_capacity(20);
    bytes.extend_from_slice(&position.segment.to_le_bytes());
    bytes.extend_from_slice(&position.offset.to_le_bytes());
    let checksum = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&checksum.to_le_bytes());
    let temp = dir.join(CURSOR_TEMP_FILE);
    std::fs::write(&temp, &bytes).map_err(io_error(&temp))?;
    std::fs::rename(&temp, dir.join(CURSOR_FILE)).map_err(io_error(dir))
}

fn list_segments(dir: &Path) -> Result<Vec<u64>, SpoolError> {
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let name = entry.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|name| name.strip_suffix(SEGMENT_SUFFIX))
            .and_then(|id| id.parse::<u64>().ok())
        else {
            continue;
        };
        segments.push(id);
    }
    segments.sort_unstable();
    Ok(segments)
}

/// What a start found in the folder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovered {
    pub segments: usize,
    pub events: u64,
    pub bytes: u64,
    /// Bytes after the last valid frame of a segment (writes torn by a crash).
    pub torn_bytes: u64,
}

impl Spool {
    /// Opens the spool folder (creating it), finds what is still undelivered, starts a new
    /// segment and the sync thread. Blocking: call it before serving, or off the reactor.
    pub fn open(options: SpoolOptions) -> Result<(Self, Recovered), SpoolError> {
        let dir = options.dir.clone();
        create_private_dir(&dir)?;
        let mut cursor = read_cursor(&dir);
        let existing = list_segments(&dir)?;
        let mut recovered = Recovered::default();
        let mut segments = BTreeMap::new();
        if let Some(first) = existing.first() {
            // A cursor before every segment (or none) starts at the first one.
            if cursor.is_none_or(|cursor| cursor.segment < *first) {
                cursor = Some(Position {
                    segment: *first,
                    offset: HEADER_BYTES,
                });
            }
        }
        for &segment in &existing {
            let path = segment_path(&dir, segment);
            if cursor.is_some_and(|cursor| segment < cursor.segment) {
                // Delivered; its deletion was interrupted.
                std::fs::remove_file(&path).map_err(io_error(&path))?;
                continue;
            }
            let bytes = std::fs::read(&path).map_err(io_error(&path))?;
            if let Err(error) = check_header(&bytes, &path) {
                // A crash right after creating the file leaves it without a header.
                if bytes.len() >= HEADER_BYTES as usize {
                    return Err(error);
                }
                tracing::warn!(path = %path.display(), "audit spool segment without a header: removed");
                std::fs::remove_file(&path).map_err(io_error(&path))?;
                continue;
            }
            let start = match cursor {
                Some(cursor) if cursor.segment == segment => {
                    (cursor.offset.max(HEADER_BYTES) as usize).min(bytes.len())
                }
                _ => HEADER_BYTES as usize,
            };
            let (frames, valid) = scan_frames(&bytes[start..]);
            let end = (start + valid) as u64;
            let torn = bytes.len() as u64 - end;
            if torn > 0 {
                tracing::warn!(path = %path.display(), torn_bytes = torn, "audit spool segment ends in a torn write: the bytes after the last valid frame are ignored");
            }
            recovered.segments += 1;
            recovered.events += frames.len() as u64;
            recovered.bytes += valid as u64;
            recovered.torn_bytes += torn;
            segments.insert(
                segment,
                SegmentInfo {
                    closed_end: Some(end),
                },
            );
        }
        let current = existing.last().map_or(1, |last| last + 1);
        let path = segment_path(&dir, current);
        let file = create_segment(&path)?;
        file.sync_all().map_err(io_error(&path))?;
        sync_folder(&dir)?;
        segments.insert(current, SegmentInfo { closed_end: None });
        let start = Position {
            segment: current,
            offset: HEADER_BYTES,
        };
        let segment_bytes = options.segment_bytes();
        let inner = Arc::new(Inner {
            segment_bytes,
            writer: Mutex::new(Writer {
                file: Arc::new(file),
                path,
                segment: current,
                offset: HEADER_BYTES,
                unsynced_closed: Vec::new(),
                folder_dirty: false,
            }),
            segments: Mutex::new(segments),
            undelivered_bytes: AtomicU64::new(recovered.bytes),
            undelivered_events: AtomicU64::new(recovered.events),
            reserved_bytes: AtomicU64::new(0),
            synced: watch::Sender::new(Synced {
                position: start,
                failed: false,
            }),
            failed: AtomicBool::new(false),
            signal: Arc::new(SyncSignal::default()),
            counters: SpoolCounters::default(),
            options,
        });
        if cursor.is_none() {
            write_cursor(&dir, start)?;
        }
        let thread_inner = Arc::downgrade(&inner);
        let signal = inner.signal.clone();
        let interval = match inner.options.fsync {
            FsyncPolicy::Always => None,
            FsyncPolicy::Interval(interval) => Some(interval),
        };
        std::thread::Builder::new()
            .name("audit-spool-sync".to_owned())
            .spawn(move || sync_thread(thread_inner, signal, interval))
            .map_err(io_error(&dir))?;
        Ok((Self { inner }, recovered))
    }

    pub fn options(&self) -> &SpoolOptions {
        &self.inner.options
    }

    /// Room for one event, or [`SpoolError::Full`] (refuse policy only; the drop policy
    /// always admits and decides at append time).
    pub fn reserve(&self) -> Result<Reservation, SpoolError> {
        let inner = &self.inner;
        if inner.failed.load(Ordering::Acquire) {
            return match inner.options.when_full {
                FullPolicy::Refuse => Err(SpoolError::Failed),
                FullPolicy::Drop => Ok(Reservation::none()),
            };
        }
        if inner.options.when_full == FullPolicy::Drop {
            return Ok(Reservation::none());
        }
        let frame = MAX_FRAME_BYTES as u64;
        let max = inner.options.max_bytes;
        let mut reserved = inner.reserved_bytes.load(Ordering::Acquire);
        loop {
            let used = inner.undelivered_bytes.load(Ordering::Acquire);
            if used + reserved + frame > max {
                inner.counters.refused_full.fetch_add(1, Ordering::Relaxed);
                return Err(SpoolError::Full);
            }
            match inner.reserved_bytes.compare_exchange_weak(
                reserved,
                reserved + frame,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return Ok(Reservation {
                        inner: Some(inner.clone()),
                    });
                }
                Err(actual) => reserved = actual,
            }
        }
    }

    /// Appends one event's payload; returns the position its frame ends at. With a
    /// reservation the room is already there; without one, no room means
    /// [`SpoolError::Full`] (counted as dropped).
    pub fn append(&self, payload: &[u8], reservation: Reservation) -> Result<Position, SpoolError> {
        let inner = &self.inner;
        let frame = encode_frame(payload)?;
        if inner.failed.load(Ordering::Acquire) {
            inner
                .counters
                .dropped_failed
                .fetch_add(1, Ordering::Relaxed);
            return Err(SpoolError::Failed);
        }
        if reservation.inner.is_none() {
            let used = inner.undelivered_bytes.load(Ordering::Acquire)
                + inner.reserved_bytes.load(Ordering::Acquire);
            if used + frame.len() as u64 > inner.options.max_bytes {
                inner.counters.dropped_full.fetch_add(1, Ordering::Relaxed);
                return Err(SpoolError::Full);
            }
        }
        let position = {
            let mut writer = lock(&inner.writer);
            if writer.offset + frame.len() as u64 > inner.segment_bytes
                && writer.offset > HEADER_BYTES
            {
                self.rotate(&mut writer)?;
            }
            if let Err(source) = (&*writer.file).write_all(&frame) {
                self.fail("writing an audit event", &source);
                inner
                    .counters
                    .dropped_failed
                    .fetch_add(1, Ordering::Relaxed);
                return Err(SpoolError::Io {
                    path: writer.path.clone(),
                    source,
                });
            }
            writer.offset += frame.len() as u64;
            inner
                .undelivered_bytes
                .fetch_add(frame.len() as u64, Ordering::AcqRel);
            inner.undelivered_events.fetch_add(1, Ordering::AcqRel);
            Position {
                segment: writer.segment,
                offset: writer.offset,
            }
        };
        // The room is now taken by the frame itself.
        drop(reservation);
        if inner.options.fsync == FsyncPolicy::Always {
            inner.signal.wake();
        }
        Ok(position)
    }

    /// Resolves once the event ending at `position` is as durable as the policy makes it:
    /// synced to disk under [`FsyncPolicy::Always`], at once (it is written) under
    /// [`FsyncPolicy::Interval`].
    pub async fn wait_durable(&self, position: Position) -> Result<(), SpoolError> {
        if self.inner.options.fsync != FsyncPolicy::Always {
            return Ok(());
        }
        let mut synced = self.inner.synced.subscribe();
        let state = synced
            .wait_for(|synced| synced.failed || synced.position >= position)
            .await
            .map_err(|_| SpoolError::Failed)?;
        if state.position >= position {
            Ok(())
        } else {
            Err(SpoolError::Failed)
        }
    }

    /// Closes the writer's segment and opens the next one. Called with the writer locked.
    fn rotate(&self, writer: &mut Writer) -> Result<(), SpoolError> {
        let inner = &self.inner;
        let next = writer.segment + 1;
        let path = segment_path(&inner.options.dir, next);
        let file = match create_segment(&path) {
            Ok(file) => file,
            Err(error) => {
                self.fail("creating an audit spool segment", &error);
                return Err(error);
            }
        };
        let closed = std::mem::replace(&mut writer.file, Arc::new(file));
        writer.unsynced_closed.push(closed);
        writer.folder_dirty = true;
        {
            let mut segments = lock(&inner.segments);
            if let Some(info) = segments.get_mut(&writer.segment) {
                info.closed_end = Some(writer.offset);
            }
            segments.insert(next, SegmentInfo { closed_end: None });
        }
        writer.segment = next;
        writer.path = path;
        writer.offset = HEADER_BYTES;
        Ok(())
    }

    fn fail(&self, what: &str, error: &dyn std::fmt::Display) {
        tracing::error!(error = %error, "{what} failed: the audit spool accepts nothing more until the node restarts");
        self.inner.failed.store(true, Ordering::Release);
        self.inner.synced.send_modify(|synced| synced.failed = true);
    }

    /// Whether a write or sync failed.
    pub fn failed(&self) -> bool {
        self.inner.failed.load(Ordering::Acquire)
    }

    /// Events and bytes written and not yet acknowledged.
    pub fn depth(&self) -> (u64, u64) {
        (
            self.inner.undelivered_events.load(Ordering::Acquire),
            self.inner.undelivered_bytes.load(Ordering::Acquire),
        )
    }

    pub fn counters(&self) -> &SpoolCounters {
        &self.inner.counters
    }

    /// Resolves once something after `position` can be read, or the spool failed.
    pub async fn wait_readable_after(&self, position: Position) {
        let mut synced = self.inner.synced.subscribe();
        let _ = synced
            .wait_for(|synced| synced.failed || synced.position > position)
            .await;
    }

    /// What the reader may read: the synced end.
    fn readable_end(&self) -> Position {
        self.inner.synced.borrow().position
    }

    /// Syncs everything written so far (at shutdown), whatever the policy.
    pub fn sync_now(&self) -> Result<(), SpoolError> {
        sync_once(&self.inner)
    }

    /// Records that everything before `cursor` is acknowledged (`events` events, `bytes`
    /// bytes of frames), persists the cursor and deletes the segments wholly before it.
    /// Blocking.
    pub fn acknowledge(&self, cursor: Position, events: u64, bytes: u64) -> Result<(), SpoolError> {
        let inner = &self.inner;
        write_cursor(&inner.options.dir, cursor)?;
        inner.undelivered_events.fetch_sub(
            events.min(inner.undelivered_events.load(Ordering::Acquire)),
            Ordering::AcqRel,
        );
        inner.undelivered_bytes.fetch_sub(
            bytes.min(inner.undelivered_bytes.load(Ordering::Acquire)),
            Ordering::AcqRel,
        );
        let delivered: Vec<u64> = {
            let mut segments = lock(&inner.segments);
            let delivered: Vec<u64> = segments
                .range(..cursor.segment)
                .filter(|(_, info)| info.closed_end.is_some())
                .map(|(id, _)| *id)
                .collect();
            for id in &delivered {
                segments.remove(id);
            }
            delivered
        };
        for id in delivered {
            let path = segment_path(&inner.options.dir, id);
            std::fs::remove_file(&path).map_err(io_error(&path))?;
        }
        Ok(())
    }

    /// A reader starting at the persisted cursor.
    pub fn reader(&self) -> SpoolReader {
        let first = lock(&self.inner.segments)
            .keys()
            .next()
            .copied()
            .unwrap_or(1);
        let position = read_cursor(&self.inner.options.dir)
            .filter(|cursor| cursor.segment >= first)
            .unwrap_or(Position {
                segment: first,
                offset: HEADER_BYTES,
            });
        SpoolReader {
            spool: self.clone(),
            position,
            file: None,
        }
    }
}

fn create_private_dir(dir: &Path) -> Result<(), SpoolError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_error(dir))
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(dir).map_err(io_error(dir))
    }
}

fn create_segment(path: &Path) -> Result<File, SpoolError> {
    let mut options = OpenOptions::new();
    options.create_new(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let file = options.open(path).map_err(io_error(path))?;
    write_header(&file, path)?;
    Ok(file)
}

/// One sync: the segments closed since the last one, the folder if a segment was created,
/// then the writer's segment up to what was written when the sync began.
fn sync_once(inner: &Inner) -> Result<(), SpoolError> {
    let (file, path, position, closed, folder_dirty) = {
        let mut writer = lock(&inner.writer);
        (
            writer.file.clone(),
            writer.path.clone(),
            Position {
                segment: writer.segment,
                offset: writer.offset,
            },
            std::mem::take(&mut writer.unsynced_closed),
            std::mem::replace(&mut writer.folder_dirty, false),
        )
    };
    if position <= inner.synced.borrow().position && closed.is_empty() && !folder_dirty {
        return Ok(());
    }
    for closed in closed {
        closed.sync_data().map_err(io_error(&path))?;
    }
    if folder_dirty {
        sync_folder(&inner.options.dir)?;
    }
    file.sync_data().map_err(io_error(&path))?;
    inner.synced.send_modify(|synced| {
        if position > synced.position {
            synced.position = position;
        }
    });
    Ok(())
}

fn sync_thread(inner: std::sync::Weak<Inner>, signal: Arc<SyncSignal>, interval: Option<Duration>) {
    loop {
        {
            let mut pending = lock(&signal.pending);
            match interval {
                None => {
                    while !*pending {
                        pending = signal
                            .wakeup
                            .wait(pending)
                            .unwrap_or_else(|poisoned| poisoned.into_inner());
                    }
                }
                Some(interval) => {
                    if !*pending {
                        pending = signal
                            .wakeup
                            .wait_timeout(pending, interval)
                            .map(|(guard, _)| guard)
                            .unwrap_or_else(|poisoned| poisoned.into_inner().0);
                    }
                }
            }
            *pending = false;
        }
        // Gone: the last handle's drop already asked to stop, and the files are closed.
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if inner.failed.load(Ordering::Acquire) {
            return;
        }
        if let Err(error) = sync_once(&inner) {
            tracing::error!(%error, "syncing the audit spool failed: it accepts nothing more until the node restarts");
            inner.failed.store(true, Ordering::Release);
            inner.synced.send_modify(|synced| synced.failed = true);
            return;
        }
        if signal.stop.load(Ordering::Acquire) {
            return;
        }
    }
}

/// One event read back from the spool.
#[derive(Debug, Clone)]
pub struct SpooledEvent {
    pub payload: Vec<u8>,
    /// Where its frame ends.
    pub end: Position,
}

/// A batch read back, in spool order.
#[derive(Debug, Default)]
pub struct ReadBatch {
    pub events: Vec<SpooledEvent>,
    /// Frame bytes the batch covers (for the undelivered count).
    pub bytes: u64,
    /// Where the next read starts, once this batch is acknowledged.
    pub end: Position,
}

/// Reads events in order from the cursor on, never past the durable end. Owned by the
/// delivery task; blocking.
pub struct SpoolReader {
    spool: Spool,
    position: Position,
    file: Option<(u64, File)>,
}

impl SpoolReader {
    pub fn position(&self) -> Position {
        self.position
    }

    /// Up to `max_events` events and about `max_bytes` bytes after the current position.
    /// The position moves past them; call [`Self::rewind`] to read them again.
    pub fn read_batch(
        &mut self,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<ReadBatch, SpoolError> {
        let mut batch = ReadBatch {
            end: self.position,
            ..ReadBatch::default()
        };
        let readable = self.spool.readable_end();
        while batch.events.len() < max_events && (batch.bytes as usize) < max_bytes {
            let info = lock(&self.spool.inner.segments)
                .get(&self.position.segment)
                .copied();
            // Where this segment's readable bytes end: a closed segment is synced in full
            // once the synced end lies in a later segment.
            let limit = match info {
                Some(info) if self.position.segment < readable.segment => {
                    info.closed_end.unwrap_or(readable.offset)
                }
                Some(_) if self.position.segment == readable.segment => readable.offset,
                Some(_) => break,
                // Deleted or never there: go on with the next segment.
                None => HEADER_BYTES,
            };
            if self.position.offset >= limit {
                if self.position.segment >= readable.segment {
                    break;
                }
                match self.next_segment() {
                    Some(next) => {
                        self.move_to(next);
                        if batch.events.is_empty() {
                            batch.end = self.position;
                        }
                        continue;
                    }
                    None => break,
                }
            }
            let room = max_bytes
                .saturating_sub(batch.bytes as usize)
                .max(MAX_FRAME_BYTES);
            let want = ((limit - self.position.offset) as usize).min(room);
            let bytes = self.read_at(self.position.offset, want)?;
            let (frames, _) = scan_frames(&bytes);
            if frames.is_empty() {
                // The readable end always lies on a frame boundary and `want` covers at
                // least one whole frame, so this is damage, not a write in progress: skip
                // the rest of the segment.
                tracing::error!(
                    segment = self.position.segment,
                    offset = self.position.offset,
                    "damaged audit spool frame: the rest of the segment is skipped"
                );
                self.spool
                    .inner
                    .counters
                    .corrupt_frames
                    .fetch_add(1, Ordering::Relaxed);
                batch.bytes += limit - self.position.offset;
                self.position.offset = limit;
                batch.end = self.position;
                continue;
            }
            let base = self.position.offset;
            for range in frames {
                if batch.events.len() >= max_events {
                    break;
                }
                let end = Position {
                    segment: self.position.segment,
                    offset: base + range.end as u64,
                };
                batch.bytes += (range.end - range.start + FRAME_HEADER_BYTES) as u64;
                batch.events.push(SpooledEvent {
                    payload: bytes[range].to_vec(),
                    end,
                });
                batch.end = end;
                self.position = end;
            }
        }
        Ok(batch)
    }

    /// Goes back to `position` (a batch that could not be delivered is read again).
    pub fn rewind(&mut self, position: Position) {
        self.position = position;
    }

    fn next_segment(&self) -> Option<u64> {
        lock(&self.spool.inner.segments)
            .range(self.position.segment + 1..)
            .next()
            .map(|(id, _)| *id)
    }

    fn move_to(&mut self, segment: u64) {
        self.position = Position {
            segment,
            offset: HEADER_BYTES,
        };
    }

    fn read_at(&mut self, offset: u64, length: usize) -> Result<Vec<u8>, SpoolError> {
        let segment = self.position.segment;
        let path = segment_path(&self.spool.inner.options.dir, segment);
        if self.file.as_ref().is_none_or(|(open, _)| *open != segment) {
            let file = File::open(&path).map_err(io_error(&path))?;
            self.file = Some((segment, file));
        }
        let Some((_, file)) = self.file.as_mut() else {
            return Ok(Vec::new());
        };
        file.seek(SeekFrom::Start(offset))
            .map_err(io_error(&path))?;
        let mut bytes = Vec::with_capacity(length);
        file.take(length as u64)
            .read_to_end(&mut bytes)
            .map_err(io_error(&path))?;
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(dir: &Path, max_bytes: u64, when_full: FullPolicy) -> SpoolOptions {
        SpoolOptions {
            dir: dir.to_path_buf(),
            max_bytes,
            fsync: FsyncPolicy::Always,
            when_full,
        }
    }

    fn payload(index: usize) -> Vec<u8> {
        format!("event-{index:05}-{}", "x".repeat(200)).into_bytes()
    }

    fn read_all(reader: &mut SpoolReader) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let batch = reader.read_batch(7, 4096).unwrap();
            if batch.events.is_empty() && batch.bytes == 0 {
                return out;
            }
            out.extend(batch.events.into_iter().map(|event| event.payload));
        }
    }

    async fn append_durably(spool: &Spool, payload: &[u8]) -> Position {
        let reservation = spool.reserve().unwrap();
        let position = spool.append(payload, reservation).unwrap();
        spool.wait_durable(position).await.unwrap();
        position
    }

    #[tokio::test]
    async fn events_come_back_in_order_across_segments_and_acknowledged_segments_go() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, recovered) =
            Spool::open(options(dir.path(), MIN_MAX_BYTES, FullPolicy::Refuse)).unwrap();
        assert_eq!(recovered, Recovered::default());
        // 16 KiB segments, ~220-byte frames: 150 events span three segments.
        for index in 0..150 {
            append_durably(&spool, &payload(index)).await;
        }
        assert!(list_segments(dir.path()).unwrap().len() >= 3);
        let mut reader = spool.reader();
        let batch = reader.read_batch(1000, 1 << 20).unwrap();
        let read: Vec<Vec<u8>> = batch.events.iter().map(|e| e.payload.clone()).collect();
        assert_eq!(read, (0..150).map(payload).collect::<Vec<_>>());
        assert_eq!(spool.depth(), (150, batch.bytes));
        spool.acknowledge(batch.end, 150, batch.bytes).unwrap();
        assert_eq!(spool.depth(), (0, 0));
        // Only the writer's segment is left.
        assert_eq!(list_segments(dir.path()).unwrap().len(), 1);
        assert!(read_all(&mut reader).is_empty());
    }

    #[tokio::test]
    async fn a_restart_resumes_after_the_acknowledged_cursor_and_ignores_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (spool, _) = Spool::open(options(dir.path(), 1 << 20, FullPolicy::Refuse)).unwrap();
            for index in 0..10 {
                append_durably(&spool, &payload(index)).await;
            }
            let mut reader = spool.reader();
            let batch = reader.read_batch(4, 1 << 20).unwrap();
            assert_eq!(batch.events.len(), 4);
            spool.acknowledge(batch.end, 4, batch.bytes).unwrap();
        }
        // A crash in the middle of a write: half a frame at the end of the last segment.
        let last = *list_segments(dir.path()).unwrap().last().unwrap();
        let torn = encode_frame(&payload(99)).unwrap();
        let mut file = OpenOptions::new()
            .append(true)
            .open(segment_path(dir.path(), last))
            .unwrap();
        file.write_all(&torn[..torn.len() / 2]).unwrap();
        drop(file);

        let (spool, recovered) =
            Spool::open(options(dir.path(), 1 << 20, FullPolicy::Refuse)).unwrap();
        assert_eq!(recovered.events, 6);
        assert_eq!(recovered.torn_bytes, (torn.len() / 2) as u64);
        assert_eq!(spool.depth().0, 6);
        append_durably(&spool, &payload(10)).await;
        let mut reader = spool.reader();
        assert_eq!(
            read_all(&mut reader),
            (4..11).map(payload).collect::<Vec<_>>()
        );
    }

    #[tokio::test]
    async fn the_refuse_policy_reserves_room_and_gives_it_back_on_acknowledgement() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) =
            Spool::open(options(dir.path(), MIN_MAX_BYTES, FullPolicy::Refuse)).unwrap();
        let mut held = Vec::new();
        loop {
            match spool.reserve() {
                Ok(reservation) => held.push(reservation),
                Err(SpoolError::Full) => break,
                Err(other) => panic!("{other}"),
            }
        }
        assert_eq!(held.len(), (MIN_MAX_BYTES as usize) / MAX_FRAME_BYTES);
        // Every admitted request still gets its event in.
        for (index, reservation) in held.drain(..).enumerate() {
            spool.append(&payload(index), reservation).unwrap();
        }
        // Small events leave room again once their reservations are turned into frames.
        assert!(spool.reserve().is_ok());
        let mut filled = 0;
        while let Ok(reservation) = spool.reserve() {
            spool.append(&payload(filled), reservation).unwrap();
            filled += 1;
        }
        assert!(matches!(spool.reserve(), Err(SpoolError::Full)));
        assert_eq!(spool.counters().refused_full.load(Ordering::Relaxed), 3);
        spool.sync_now().unwrap();
        let mut reader = spool.reader();
        let batch = reader.read_batch(usize::MAX, usize::MAX).unwrap();
        spool
            .acknowledge(batch.end, batch.events.len() as u64, batch.bytes)
            .unwrap();
        assert!(spool.reserve().is_ok());
    }

    #[tokio::test]
    async fn the_drop_policy_admits_everything_and_counts_what_does_not_fit() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(options(dir.path(), MIN_MAX_BYTES, FullPolicy::Drop)).unwrap();
        let mut stored = 0u64;
        let mut dropped = 0u64;
        for index in 0..1000 {
            let reservation = spool.reserve().unwrap();
            match spool.append(&payload(index), reservation) {
                Ok(_) => stored += 1,
                Err(SpoolError::Full) => dropped += 1,
                Err(other) => panic!("{other}"),
            }
        }
        assert!(stored > 0 && dropped > 0);
        assert!(spool.depth().1 <= MIN_MAX_BYTES);
        assert_eq!(
            spool.counters().dropped_full.load(Ordering::Relaxed),
            dropped
        );
    }

    #[tokio::test]
    async fn a_damaged_frame_skips_the_rest_of_its_segment_and_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (spool, _) = Spool::open(options(dir.path(), 1 << 20, FullPolicy::Refuse)).unwrap();
            for index in 0..5 {
                append_durably(&spool, &payload(index)).await;
            }
        }
        // Flip a byte inside the third frame's payload.
        let first = list_segments(dir.path()).unwrap()[0];
        let path = segment_path(dir.path(), first);
        let mut bytes = std::fs::read(&path).unwrap();
        let frame = FRAME_HEADER_BYTES + payload(0).len();
        bytes[HEADER_BYTES as usize + 2 * frame + 20] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let (spool, recovered) =
            Spool::open(options(dir.path(), 1 << 20, FullPolicy::Refuse)).unwrap();
        // The scan at start stops at the damage: the rest counts as torn.
        assert_eq!(recovered.events, 2);
        append_durably(&spool, &payload(5)).await;
        let mut reader = spool.reader();
        assert_eq!(
            read_all(&mut reader),
            vec![payload(0), payload(1), payload(5)]
        );
    }

    #[tokio::test]
    async fn the_interval_policy_counts_an_event_as_durable_once_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = options(dir.path(), 1 << 20, FullPolicy::Refuse);
        options.fsync = FsyncPolicy::Interval(Duration::from_millis(5));
        let (spool, _) = Spool::open(options).unwrap();
        let position = spool.append(&payload(0), spool.reserve().unwrap()).unwrap();
        spool.wait_durable(position).await.unwrap();
        // The reader sees it once the timer's sync ran.
        spool.wait_readable_after(spool.reader().position()).await;
        assert_eq!(read_all(&mut spool.reader()), vec![payload(0)]);
    }

    #[test]
    fn frames_refuse_empty_and_oversized_payloads() {
        assert!(encode_frame(&[]).is_err());
        assert!(encode_frame(&vec![1u8; MAX_PAYLOAD_BYTES + 1]).is_err());
        let frame = encode_frame(b"abc").unwrap();
        let (frames, end) = scan_frames(&frame);
        assert_eq!(frames, vec![FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + 3]);
        assert_eq!(end, frame.len());
        // A zero-filled region (a file extended but never written) is no frame.
        assert_eq!(scan_frames(&[0u8; 64]), (vec![], 0));
    }
}
