//! Files: the atomic, durable write and the validated, checksummed read.
//!
//! Writing goes to a temporary file in the target's folder (created exclusively), which is
//! preallocated (so a full disk fails before any byte is written where the filesystem allows),
//! filled in parallel (each piece is checksummed right before it is written, while it is hot in
//! cache, and its writeback to disk is started at once so the final fsync has little left), given its header last, fsynced, renamed over the target, and the folder is fsynced.
//! A crash at any instant therefore leaves either the previous file or the new one under the
//! final name; at worst a stray `.<name>.<pid>.<n>.tmp` file remains. Any failure removes the
//! temporary file and is reported with the target's path.
//!
//! Reading parses the header with bounded reads (never trusting a length before checking it
//! against the file's size) and verifies every tensor's CRC-32 over a read-only memory map.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::error::{CheckpointError, FormatError};
use super::format::{self, ParsedHeader};
use super::gate::RawBuffer;
use super::layout::FileLayout;
use super::torchzip::{self, ReadAt, TorchFile};
use super::parallel::{self, Piece};

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn temp_path(path: &Path) -> Result<(PathBuf, PathBuf), CheckpointError> {
    let name = path.file_name().ok_or_else(|| {
        CheckpointError::Invalid(format!("'{}' does not name a file", path.display()))
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(
        ".{}.{}.{n}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    Ok((dir, tmp))
}

/// Reserve the file's blocks up front: ENOSPC / EFBIG then surface before any data is written.
fn preallocate(file: &File, len: u64, path: &Path) -> Result<(), CheckpointError> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let Ok(len_i) = libc::off_t::try_from(len) else {
            return Err(CheckpointError::Invalid(format!(
                "checkpoint of {len} bytes is too large"
            )));
        };
        if len_i > 0 {
            // SAFETY: plain syscall on a file descriptor we own; no memory is passed.
            let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len_i) };
            if rc != 0 {
                let err = std::io::Error::last_os_error();
                // Filesystems without fallocate: fall back to growing the file as we write.
                let unsupported = matches!(
                    err.raw_os_error(),
                    Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS)
                );
                if !unsupported {
                    return Err(CheckpointError::io(
                        path,
                        "cannot reserve space for the checkpoint",
                        err,
                    ));
                }
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (file, len, path);
    }
    Ok(())
}

/// Ask the kernel to start writing `len` bytes at `at` back to disk now, without waiting: the
/// disk then works while later pieces are still being checksummed and copied, and the final
/// fsync has little left to flush. Advice only: errors are ignored (fsync reports real ones).
fn start_writeback(file: &File, at: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        if let (Ok(at), Ok(len)) = (libc::off64_t::try_from(at), libc::off64_t::try_from(len)) {
            // SAFETY: plain syscall on a file descriptor we own; no memory is passed.
            unsafe {
                libc::sync_file_range(file.as_raw_fd(), at, len, libc::SYNC_FILE_RANGE_WRITE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, at, len);
}

fn write_body<'s, L, F>(
    file: &File,
    path: &Path,
    layout: &L,
    piece_bytes: F,
) -> Result<(), CheckpointError>
where
    L: FileLayout + Sync + ?Sized,
    F: Fn(usize, Piece) -> Result<&'s [u8], CheckpointError> + Sync,
{
    preallocate(file, layout.file_len(), path)?;
    let lens = layout.tensor_nbytes();
    let pieces = parallel::pieces(lens);
    let states = parallel::run(pieces.len(), lens.iter().sum(), |i| {
        let p = pieces[i];
        let bytes = piece_bytes(i, p)?;
        let mut h = crc32fast::Hasher::new();
        h.update(bytes);
        let at = layout.tensor_at(p.tensor) + p.start;
        file.write_all_at(bytes, at)
            .map_err(|e| CheckpointError::io(path, "cannot write tensor data", e))?;
        start_writeback(file, at, p.len);
        Ok(h)
    })?;
    let crcs = parallel::combine_crcs(lens, &pieces, &states);
    // The framing (headers, central directory) goes last: until it is complete the temporary
    // file is not a readable checkpoint, and it never gets a checkpoint's name before fsync.
    for (at, bytes) in layout.framing(&crcs)? {
        file.write_all_at(&bytes, at)
            .map_err(|e| CheckpointError::io(path, "cannot write the header", e))?;
    }
    file.sync_all()
        .map_err(|e| CheckpointError::io(path, "cannot flush the checkpoint to disk (fsync)", e))
}

/// Write a checkpoint atomically and durably: `sources[i]` holds the bytes of `layout.specs()[i]`.
/// When this returns Ok, the file is on disk under `path` (data and directory entry fsynced).
pub fn write_atomic<L: FileLayout + Sync + ?Sized>(
    path: &Path,
    layout: &L,
    sources: &[&[u8]],
) -> Result<(), CheckpointError> {
    if sources.len() != layout.tensor_nbytes().len()
        || sources
            .iter()
            .zip(layout.tensor_nbytes())
            .any(|(s, &n)| s.len() as u64 != n)
    {
        return Err(CheckpointError::Invalid(
            "tensor byte counts do not match the layout".into(),
        ));
    }
    write_atomic_with(path, layout, |_, p: Piece| {
        sources
            .get(p.tensor)
            .and_then(|s| s.get(p.start as usize..(p.start + p.len) as usize))
            .ok_or_else(|| CheckpointError::Invalid("internal error: piece out of range".into()))
    })
}

/// `write_atomic` with the bytes of each piece (`parallel::pieces(layout.tensor_nbytes())`, by index)
/// supplied by `piece_bytes`, called once per piece from the writing threads.
pub fn write_atomic_with<'s, L, F>(
    path: &Path,
    layout: &L,
    piece_bytes: F,
) -> Result<(), CheckpointError>
where
    L: FileLayout + Sync + ?Sized,
    F: Fn(usize, Piece) -> Result<&'s [u8], CheckpointError> + Sync,
{
    let (dir, tmp) = temp_path(path)?;
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| {
            CheckpointError::io(
                path,
                format!("cannot create a temporary file in '{}'", dir.display()),
                e,
            )
        })?;
    let written = write_body(&file, path, layout, piece_bytes);
    drop(file);
    // Hold the file being replaced open across the rename: the kernel then frees its blocks
    // when we close it (off the critical path, below) instead of inside `rename`, which costs
    // ~0.1 s per 400 MB on ext4.
    let replaced = match std::fs::symlink_metadata(path) {
        // Only a regular file: opening a FIFO for reading would block.
        Ok(m) if written.is_ok() && m.is_file() => File::open(path).ok(),
        _ => None,
    };
    let renamed = written.and_then(|()| {
        std::fs::rename(&tmp, path)
            .map_err(|e| CheckpointError::io(path, "cannot move the new checkpoint into place", e))
    });
    if let Err(e) = renamed {
        // Best effort: the temporary file is garbage now; the error that matters is `e`.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    // Make the rename itself durable.
    let synced = File::open(&dir).and_then(|d| d.sync_all()).map_err(|e| {
        CheckpointError::io(
            path,
            format!("cannot fsync the folder '{}'", dir.display()),
            e,
        )
    });
    if let Some(old) = replaced {
        release_in_background(old);
    }
    synced
}

/// Close the replaced file on a short-lived thread: the last close of an unlinked file frees
/// its blocks, which need not delay the caller. (If the thread cannot start, the closure is
/// dropped and the file closed right here.)
fn release_in_background(old: File) {
    let _ = std::thread::Builder::new()
        .name("ferrotrain-ckpt-free".into())
        .spawn(move || drop(old));
}

/// Read and validate the header of an open checkpoint file (ferrotrain metadata included).
/// Returns the header and the expected CRC-32 of each entry, in entry order.
pub fn read_header(file: &File, path: &Path) -> Result<(ParsedHeader, Vec<u32>), CheckpointError> {
    let file_len = file
        .metadata()
        .map_err(|e| CheckpointError::io(path, "cannot stat", e))?
        .len();
    let mut prefix = [0u8; 8];
    if file_len < 8 {
        return Err(CheckpointError::corrupt(
            path,
            format!("file of {file_len} bytes is too short to be a checkpoint"),
        ));
    }
    file.read_exact_at(&mut prefix, 0)
        .map_err(|e| CheckpointError::io(path, "cannot read", e))?;
    let n = format::header_len(prefix, file_len).map_err(|e| e.at(path))?;
    // `n` is at most MAX_HEADER_LEN and fits in the file: the allocation is bounded.
    let mut json = vec![0u8; n as usize];
    file.read_exact_at(&mut json, 8)
        .map_err(|e| CheckpointError::io(path, "cannot read the header", e))?;
    let data_start = 8 + n;
    let header =
        format::parse_header(&json, data_start, file_len - data_start).map_err(|e| e.at(path))?;
    let crcs = format::ferrotrain_checksums(&header).map_err(|e| e.at(path))?;
    Ok((header, crcs))
}

/// Check every tensor's CRC-32 over the data region `data` (the bytes after the header).
pub fn verify_data(data: &[u8], header: &ParsedHeader, crcs: &[u32]) -> Result<(), FormatError> {
    let slices = header
        .entries
        .iter()
        .map(|e| data.get(e.start as usize..e.end as usize))
        .collect::<Option<Vec<&[u8]>>>()
        .ok_or_else(|| FormatError::new("data region shorter than the header says"))?;
    let got = parallel::crcs_of(&slices).map_err(|e| FormatError::new(e.to_string()))?;
    for ((e, &want), &got) in header.entries.iter().zip(crcs).zip(&got) {
        if want != got {
            return Err(FormatError::new(format!(
                "checksum mismatch in tensor '{}' (stored {want:08x}, computed {got:08x})",
                e.name
            )));
        }
    }
    Ok(())
}

/// Parse, validate and (when `verify`) checksum a checkpoint held in memory: the pure-Rust path
/// the fuzz tests drive.
pub fn check_bytes(file: &[u8], verify: bool) -> Result<ParsedHeader, FormatError> {
    let header = format::parse(file)?;
    let crcs = format::ferrotrain_checksums(&header)?;
    if verify {
        let data = file.get(header.data_start as usize..).unwrap_or(&[]);
        verify_data(data, &header, &crcs)?;
    }
    Ok(header)
}

/// Validate an open checkpoint file and, when `verify`, check every tensor's checksum.
pub fn open_checkpoint(
    file: &File,
    path: &Path,
    verify: bool,
) -> Result<ParsedHeader, CheckpointError> {
    let (header, crcs) = read_header(file, path)?;
    if verify && header.data_len > 0 {
        // SAFETY: the map is read-only and private to this call. Another process truncating the
        // file meanwhile could fault the reads (the usual caveat of memory-mapped I/O); we check
        // the mapped length against what we parsed before touching the data.
        let map = unsafe { memmap2::Mmap::map(file) }
            .map_err(|e| CheckpointError::io(path, "cannot map", e))?;
        let data = map
            .get(header.data_start as usize..)
            .filter(|d| d.len() as u64 == header.data_len)
            .ok_or_else(|| {
                CheckpointError::corrupt(path, "the file changed size while being read")
            })?;
        verify_data(data, &header, &crcs).map_err(|e| e.at(path))?;
    }
    Ok(header)
}

// ------------------------------------------------------------------------- torch checkpoints

struct FileAt<'a>(&'a File, u64);

impl ReadAt for FileAt<'_> {
    fn file_len(&self) -> u64 {
        self.1
    }
    fn read_at(&self, at: u64, n: usize) -> Result<Vec<u8>, FormatError> {
        if at.checked_add(n as u64).map_or(true, |e| e > self.1) {
            return Err(FormatError::new("a record runs past the end of the file (truncated?)"));
        }
        let mut buf = vec![0u8; n];
        self.0
            .read_exact_at(&mut buf, at)
            .map_err(|e| FormatError::new(format!("cannot read: {e}")))?;
        Ok(buf)
    }
}

/// Open a torch checkpoint (zip archive): its central directory, `data.pkl` (CRC-checked and
/// decoded without running anything) and the location of every storage. Storage bytes are read
/// (and checked) by `read_storages` or `verify_storages`.
pub fn open_torch(file: &File, path: &Path) -> Result<TorchFile, CheckpointError> {
    let len = file
        .metadata()
        .map_err(|e| CheckpointError::io(path, "cannot stat", e))?
        .len();
    torchzip::open(&FileAt(file, len)).map_err(|e| e.at(path))
}

fn mismatch(path: &Path, name: &str, want: u32, got: u32) -> CheckpointError {
    CheckpointError::corrupt(
        path,
        format!("checksum mismatch in entry '{name}' (stored {want:08x}, computed {got:08x})"),
    )
}

/// Read storages into memory the caller owns: `ranges[i] = (file offset, nbytes, crc, name)`
/// goes to `dsts[i]`; in parallel pieces, each checksummed as it arrives (when `verify`), so
/// reading and checking are one pass over the bytes.
///
/// # Safety
/// Each `dsts[i]` must address `ranges[i].1` writable bytes that nothing else touches during
/// the call.
pub unsafe fn read_storages(
    file: &File,
    path: &Path,
    ranges: &[(u64, u64, u32, String)],
    dsts: &[RawBuffer],
    verify: bool,
) -> Result<(), CheckpointError> {
    if ranges.len() != dsts.len() {
        return Err(CheckpointError::Invalid("one destination per storage expected".into()));
    }
    let lens: Vec<u64> = ranges.iter().map(|r| r.1).collect();
    let pieces = parallel::pieces(&lens);
    let states = parallel::run(pieces.len(), lens.iter().sum(), |i| {
        let p = pieces[i];
        let (at, _, _, _) = &ranges[p.tensor];
        // SAFETY: the caller guarantees the destination; pieces are disjoint.
        let dst = unsafe { dsts[p.tensor].piece_mut(p.start, p.len)? };
        file.read_exact_at(dst, at + p.start).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                CheckpointError::corrupt(path, "the file is shorter than its central directory says (truncated)")
            } else {
                CheckpointError::io(path, "cannot read tensor data", e)
            }
        })?;
        let mut h = crc32fast::Hasher::new();
        if verify {
            h.update(dst);
        }
        Ok(h)
    })?;
    if verify {
        let crcs = parallel::combine_crcs(&lens, &pieces, &states);
        for (r, got) in ranges.iter().zip(crcs) {
            if r.2 != got {
                return Err(mismatch(path, &r.3, r.2, got));
            }
        }
    }
    Ok(())
}

/// Check the CRC-32 of file ranges `(offset, nbytes, crc, name)` over a read-only map (for
/// storages the caller then maps itself).
pub fn verify_ranges(
    file: &File,
    path: &Path,
    ranges: &[(u64, u64, u32, String)],
) -> Result<(), CheckpointError> {
    let total: u64 = ranges.iter().map(|r| r.1).sum();
    if total == 0 {
        return Ok(());
    }
    // SAFETY: read-only and private to this call; lengths are checked against the map below
    // (a foreign process truncating the file meanwhile is the usual mmap caveat).
    let map = unsafe { memmap2::Mmap::map(file) }.map_err(|e| CheckpointError::io(path, "cannot map", e))?;
    let slices = ranges
        .iter()
        .map(|r| map.get(r.0 as usize..(r.0 + r.1) as usize))
        .collect::<Option<Vec<&[u8]>>>()
        .ok_or_else(|| CheckpointError::corrupt(path, "the file changed size while being read"))?;
    let got = parallel::crcs_of(&slices)?;
    for (r, g) in ranges.iter().zip(got) {
        if r.2 != g {
            return Err(mismatch(path, &r.3, r.2, g));
        }
    }
    Ok(())
}
