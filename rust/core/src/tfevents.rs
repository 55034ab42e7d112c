//! TensorBoard event files, written natively: the scalar `Event` protos encoded here, TFRecord
//! framing, and a background thread that appends the records to the file, so logging a scalar
//! costs the training thread a few microseconds and no Python writer thread competes for the GIL.
//!
//! A record is `u64 length (LE) | masked CRC-32C of the length | data | masked CRC-32C of the
//! data`, where masking is `((crc >> 15) | (crc << 17)) + 0xa282ead8` (TensorFlow's `crc32c::Mask`).
//! The protos (tensorboard's `event.proto` / `summary.proto`; only the fields written here):
//!
//! ```text
//! Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5;
//!           SourceMetadata source_metadata = 10; }
//! Summary { repeated Value value = 1; }   Value { string tag = 1; float simple_value = 2; }
//! SourceMetadata { string writer = 1; }
//! ```
//!
//! Other events (hyperparameters, graphs, histograms...) arrive already serialized (built by
//! tensorboard's Python helpers) and are only framed here.
//!
//! Ordering and errors: records are written in the order they were added, one writer thread per
//! file. The file is written through a buffer that the thread empties whenever the queue runs
//! dry, so data reaches the OS right after each logging call without the caller waiting. The
//! first I/O error is kept and returned by every later call (`add`, `flush`, `close`); the
//! thread stops writing then.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

/// The `file_version` of the first event of every file.
pub const FILE_VERSION: &str = "brain.Event:2";

// --- CRC-32C (Castagnoli), table-driven -----------------------------------------------------------

const CRC32C_POLY: u32 = 0x82F6_3B78; // reversed 0x1EDC6F41

const fn crc_table() -> [[u32; 256]; 8] {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ CRC32C_POLY
            } else {
                c >> 1
            };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    // Slicing-by-8 tables: t[j][i] is the CRC of byte i followed by j zero bytes.
    let mut j = 1;
    while j < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[j - 1][i];
            t[j][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            i += 1;
        }
        j += 1;
    }
    t
}

static CRC_TABLE: [[u32; 256]; 8] = crc_table();

/// CRC-32C of `data` (as `crc32c` in TensorFlow, iSCSI, ext4).
pub fn crc32c(data: &[u8]) -> u32 {
    let t = &CRC_TABLE;
    let mut crc = !0u32;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let lo = crc ^ u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        crc = t[7][(lo & 0xff) as usize]
            ^ t[6][((lo >> 8) & 0xff) as usize]
            ^ t[5][((lo >> 16) & 0xff) as usize]
            ^ t[4][(lo >> 24) as usize]
            ^ t[3][c[4] as usize]
            ^ t[2][c[5] as usize]
            ^ t[1][c[6] as usize]
            ^ t[0][c[7] as usize];
    }
    for &b in chunks.remainder() {
        crc = (crc >> 8) ^ t[0][((crc ^ b as u32) & 0xff) as usize];
    }
    !crc
}

/// TensorFlow's masked CRC (what TFRecord files store).
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c(data);
    (crc.rotate_right(15)).wrapping_add(0xa282_ead8)
}

/// Append `data` as one TFRecord to `out`.
pub fn frame_into(out: &mut Vec<u8>, data: &[u8]) {
    let len = (data.len() as u64).to_le_bytes();
    out.reserve(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
}

// --- protobuf encoding -----------------------------------------------------------------------------

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_varint(out, u64::from(field << 3 | 2));
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_event_head(out: &mut Vec<u8>, wall_time: f64, step: Option<i64>) {
    if wall_time != 0.0 {
        out.push(1 << 3 | 1); // wall_time: fixed64
        out.extend_from_slice(&wall_time.to_le_bytes());
    }
    if let Some(step) = step.filter(|&s| s != 0) {
        out.push(2 << 3); // step: varint (two's complement for negatives, 10 bytes)
        put_varint(out, step as u64);
    }
}

/// The serialized `Event{wall_time, step, summary{value{tag, simple_value}}}` of one scalar
/// (as `SummaryWriter.add_scalar` writes it: one event per scalar, the value as a float32).
pub fn scalar_event(tag: &str, value: f32, step: Option<i64>, wall_time: f64) -> Vec<u8> {
    let mut val = Vec::with_capacity(tag.len() + 8);
    put_bytes_field(&mut val, 1, tag.as_bytes());
    val.push(2 << 3 | 5); // simple_value: fixed32
    val.extend_from_slice(&value.to_le_bytes());
    let mut summary = Vec::with_capacity(val.len() + 4);
    put_bytes_field(&mut summary, 1, &val);
    let mut ev = Vec::with_capacity(summary.len() + 24);
    put_event_head(&mut ev, wall_time, step);
    put_bytes_field(&mut ev, 5, &summary);
    ev
}

/// The serialized first event of a file: `Event{wall_time, file_version, source_metadata{writer}}`.
pub fn file_version_event(wall_time: f64, writer: &str) -> Vec<u8> {
    let mut ev = Vec::with_capacity(48);
    put_event_head(&mut ev, wall_time, None);
    put_bytes_field(&mut ev, 3, FILE_VERSION.as_bytes());
    let mut meta = Vec::with_capacity(writer.len() + 2);
    put_bytes_field(&mut meta, 1, writer.as_bytes());
    put_bytes_field(&mut ev, 10, &meta);
    ev
}

/// Seconds since the epoch, as `time.time()`.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

// --- the file writer -------------------------------------------------------------------------------

enum Msg {
    /// Framed records to append.
    Records(Vec<u8>),
    /// Write out everything queued before it, then answer.
    Flush(SyncSender<()>),
}

/// The first background error, kept to be reported by every later call.
type SharedError = Arc<Mutex<Option<(io::ErrorKind, String)>>>;

/// Appends TFRecords to one event file on a background thread.
pub struct EventWriter {
    path: PathBuf,
    tx: Option<Sender<Msg>>,
    handle: Option<JoinHandle<()>>,
    error: SharedError,
    pid: u32,
}

impl EventWriter {
    /// Create `path` (which must not exist: event files are never overwritten), write its
    /// `file_version` event, and start the writer thread. `writer` names the program in the
    /// first event's `source_metadata`.
    pub fn create(path: &Path, writer: &str) -> io::Result<Self> {
        let file = OpenOptions::new().write(true).create_new(true).open(path)?;
        let mut first = Vec::new();
        frame_into(&mut first, &file_version_event(now(), writer));
        let (tx, rx) = mpsc::channel();
        let error: SharedError = Arc::default();
        let thread_error = Arc::clone(&error);
        let thread_path = path.to_path_buf();
        let handle = std::thread::Builder::new()
            .name("ferrotrain-tfevents".into())
            .spawn(move || {
                run(
                    BufWriter::with_capacity(64 << 10, file),
                    rx,
                    &thread_error,
                    &thread_path,
                )
            })?;
        let w = Self {
            path: path.to_path_buf(),
            tx: Some(tx),
            handle: Some(handle),
            error,
            pid: std::process::id(),
        };
        w.send(Msg::Records(first))?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn check(&self) -> io::Result<()> {
        let guard = self.error.lock().unwrap_or_else(PoisonError::into_inner);
        match &*guard {
            Some((kind, msg)) => Err(io::Error::new(*kind, msg.clone())),
            None => Ok(()),
        }
    }

    fn send(&self, msg: Msg) -> io::Result<()> {
        self.check()?;
        let closed = || {
            io::Error::other(format!(
                "the event file '{}' is closed",
                self.path.display()
            ))
        };
        let tx = self.tx.as_ref().ok_or_else(closed)?;
        tx.send(msg).map_err(|_| closed())
    }

    /// Queue one scalar event per `(tag, value)`, all at `step` and `wall_time`.
    pub fn add_scalars(
        &self,
        scalars: &[(String, f32)],
        step: Option<i64>,
        wall_time: f64,
    ) -> io::Result<()> {
        let mut buf = Vec::with_capacity(scalars.len() * 64);
        for (tag, value) in scalars {
            frame_into(&mut buf, &scalar_event(tag, *value, step, wall_time));
        }
        self.send(Msg::Records(buf))
    }

    /// Queue serialized `Event` protos, one record each.
    pub fn add_events(&self, events: &[&[u8]]) -> io::Result<()> {
        let mut buf = Vec::with_capacity(events.iter().map(|e| e.len() + 16).sum());
        for ev in events {
            frame_into(&mut buf, ev);
        }
        self.send(Msg::Records(buf))
    }

    /// Block until everything queued so far is written to the file (handed to the OS).
    pub fn flush(&self) -> io::Result<()> {
        let (ack_tx, ack_rx) = mpsc::sync_channel(1);
        self.send(Msg::Flush(ack_tx))?;
        // A thread that stopped on an error drops the ack sender: report that error.
        let answered = ack_rx.recv().is_ok();
        self.check()?;
        if answered {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "the writer thread of '{}' stopped",
                self.path.display()
            )))
        }
    }

    /// Write out what is queued, stop the thread and close the file. Idempotent.
    pub fn close(&mut self) -> io::Result<()> {
        drop(self.tx.take());
        if let Some(handle) = self.handle.take() {
            if self.pid != std::process::id() {
                // Forked child: the thread lives in the parent only.
                std::mem::forget(handle);
                return Ok(());
            }
            if handle.join().is_err() {
                return Err(io::Error::other(format!(
                    "internal error: the writer thread of '{}' panicked",
                    self.path.display()
                )));
            }
        }
        self.check()
    }

    /// True once `close` was called.
    pub fn closed(&self) -> bool {
        self.tx.is_none()
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            eprintln!("ferrotrain: event file '{}': {e}", self.path.display());
        }
    }
}

fn run(mut out: BufWriter<File>, rx: Receiver<Msg>, error: &SharedError, path: &Path) {
    let fail = |e: io::Error| {
        let mut guard = error.lock().unwrap_or_else(PoisonError::into_inner);
        if guard.is_none() {
            *guard = Some((
                e.kind(),
                format!("cannot write the event file '{}': {e}", path.display()),
            ));
        }
    };
    // Block for the next message, then take whatever else is queued before writing out.
    while let Ok(mut msg) = rx.recv() {
        loop {
            match msg {
                Msg::Records(bytes) => {
                    if let Err(e) = out.write_all(&bytes) {
                        return fail(e);
                    }
                }
                Msg::Flush(ack) => {
                    if let Err(e) = out.flush() {
                        return fail(e);
                    }
                    let _ = ack.send(());
                }
            }
            match rx.try_recv() {
                Ok(next) => msg = next,
                Err(_) => break,
            }
        }
        if let Err(e) = out.flush() {
            return fail(e);
        }
    }
    if let Err(e) = out.flush() {
        fail(e);
    }
}

#[cfg(test)]
mod tests;
