//! The work split shared by the parallel passes (checksum + write, checksum verification,
//! snapshot copies): tensors are cut into pieces of at most `PIECE` bytes that a few scoped
//! threads pull from a shared counter, so one huge tensor is spread over all threads too.
//! Per-piece CRC-32 states are combined back into one checksum per tensor.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::error::CheckpointError;

/// Piece size: large enough that thread hand-offs are negligible, small enough to balance.
pub const PIECE: u64 = 4 << 20;
const MAX_THREADS: usize = 8;
/// Below this many bytes a pass runs on the calling thread: starting scoped threads costs more
/// than the work (tens of microseconds each, far more when the cores are busy), and the snapshot
/// copy runs on the training thread, which waits for them.
pub const PARALLEL_MIN_BYTES: u64 = PIECE;

/// A byte range `start..start + len` of tensor `tensor` (relative to that tensor).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    pub tensor: usize,
    pub start: u64,
    pub len: u64,
}

/// Cut tensors of the given byte lengths into pieces, in tensor order then byte order.
/// Empty tensors get no piece.
pub fn pieces(lens: &[u64]) -> Vec<Piece> {
    let mut out = Vec::new();
    for (tensor, &len) in lens.iter().enumerate() {
        let mut start = 0;
        while start < len {
            let n = PIECE.min(len - start);
            out.push(Piece {
                tensor,
                start,
                len: n,
            });
            start += n;
        }
    }
    out
}

fn threads_for(items: usize, bytes: u64) -> usize {
    if bytes < PARALLEL_MIN_BYTES {
        return 1;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores.min(MAX_THREADS).min(items).max(1)
}

/// Run `f(i)` for every `i` in `0..n` on a few scoped threads and return the results in order;
/// `bytes` is the work's total size: a small pass (under `PARALLEL_MIN_BYTES`) runs inline.
/// The first error stops the other threads at their next item and is returned.
pub fn run<T, F>(n: usize, bytes: u64, f: F) -> Result<Vec<T>, CheckpointError>
where
    T: Send,
    F: Fn(usize) -> Result<T, CheckpointError> + Sync,
{
    let threads = threads_for(n, bytes);
    if threads <= 1 {
        return (0..n).map(&f).collect();
    }
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let worker = || -> Result<Vec<(usize, T)>, CheckpointError> {
        let mut done = Vec::new();
        while !failed.load(Ordering::Relaxed) {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                break;
            }
            match f(i) {
                Ok(v) => done.push((i, v)),
                Err(e) => {
                    failed.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        Ok(done)
    };
    let per_thread: Vec<Result<Vec<(usize, T)>, CheckpointError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads).map(|_| s.spawn(worker)).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(CheckpointError::Invalid(
                        "internal error: a checkpoint worker thread panicked".into(),
                    ))
                })
            })
            .collect()
    });
    let mut slots: Vec<Option<T>> = (0..n).map(|_| None).collect();
    for r in per_thread {
        for (i, v) in r? {
            if let Some(slot) = slots.get_mut(i) {
                *slot = Some(v);
            }
        }
    }
    slots
        .into_iter()
        .map(|s| {
            s.ok_or_else(|| CheckpointError::Invalid("internal error: a piece was skipped".into()))
        })
        .collect()
}

/// Combine per-piece CRC-32 states (as produced over `pieces(lens)`) into one CRC-32 per tensor.
pub fn combine_crcs(lens: &[u64], pieces: &[Piece], states: &[crc32fast::Hasher]) -> Vec<u32> {
    let mut acc: Vec<crc32fast::Hasher> = lens.iter().map(|_| crc32fast::Hasher::new()).collect();
    for (p, h) in pieces.iter().zip(states) {
        if let Some(a) = acc.get_mut(p.tensor) {
            a.combine(h);
        }
    }
    acc.into_iter().map(crc32fast::Hasher::finalize).collect()
}

/// CRC-32 of each slice, computed in parallel.
pub fn crcs_of(slices: &[&[u8]]) -> Result<Vec<u32>, CheckpointError> {
    let lens: Vec<u64> = slices.iter().map(|s| s.len() as u64).collect();
    let ps = pieces(&lens);
    let states = run(ps.len(), lens.iter().sum(), |i| {
        let p = ps[i];
        let bytes = slices
            .get(p.tensor)
            .and_then(|s| s.get(p.start as usize..(p.start + p.len) as usize))
            .ok_or_else(|| CheckpointError::Invalid("internal error: piece out of range".into()))?;
        let mut h = crc32fast::Hasher::new();
        h.update(bytes);
        Ok(h)
    })?;
    Ok(combine_crcs(&lens, &ps, &states))
}

/// A destination pointer shared by the copy threads.
struct SharedDst(*mut u8);
// SAFETY: the threads write through it only to pairwise-disjoint ranges that `parallel_copy`
// checked to lie inside the destination slice, which outlives the scoped threads.
unsafe impl Sync for SharedDst {}

/// Copy each `(src, offset)` into `dst[offset..offset + src.len()]`, in parallel. The destination
/// ranges must lie inside `dst` and be pairwise disjoint (checked).
pub fn parallel_copy(dst: &mut [u8], copies: &[(&[u8], u64)]) -> Result<(), CheckpointError> {
    let mut ranges: Vec<(u64, u64)> = Vec::with_capacity(copies.len());
    for (src, off) in copies {
        let end = off
            .checked_add(src.len() as u64)
            .filter(|&e| e <= dst.len() as u64)
            .ok_or_else(|| {
                CheckpointError::Invalid(format!(
                    "copy of {} bytes at {off} runs past the buffer",
                    src.len()
                ))
            })?;
        let dst_range = dst.as_ptr_range();
        let src_range = src.as_ptr_range();
        if !src.is_empty() && src_range.start < dst_range.end && dst_range.start < src_range.end {
            return Err(CheckpointError::Invalid(
                "a source tensor overlaps the snapshot buffer".into(),
            ));
        }
        ranges.push((*off, end));
    }
    ranges.retain(|(a, b)| a != b);
    ranges.sort_unstable();
    if ranges.windows(2).any(|w| w[0].1 > w[1].0) {
        return Err(CheckpointError::Invalid("snapshot copies overlap".into()));
    }
    let lens: Vec<u64> = copies.iter().map(|(s, _)| s.len() as u64).collect();
    let ps = pieces(&lens);
    let base = SharedDst(dst.as_mut_ptr());
    let base = &base;
    run(ps.len(), lens.iter().sum(), |i| {
        let p = ps[i];
        let (src, off) = copies
            .get(p.tensor)
            .ok_or_else(|| CheckpointError::Invalid("internal error: piece out of range".into()))?;
        let from = src
            .get(p.start as usize..(p.start + p.len) as usize)
            .ok_or_else(|| CheckpointError::Invalid("internal error: piece out of range".into()))?;
        // SAFETY: `off + p.start + p.len <= dst.len()` (checked above for the whole copy), the
        // destination ranges of different copies are disjoint (checked) and pieces of one copy
        // are disjoint, so no two threads write the same byte; `src` does not overlap `dst`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                from.as_ptr(),
                base.0.add((off + p.start) as usize),
                from.len(),
            );
        }
        Ok(())
    })?;
    Ok(())
}

/// Ask the kernel to back `buf` with transparent huge pages (where the system allows it on
/// request): a fresh snapshot buffer then takes 2 MiB page faults instead of 4 KiB ones, which
/// makes the first snapshot into it several times faster. Advice only: errors are ignored.
pub fn advise_huge_pages(buf: &mut [u8]) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = buf.as_mut_ptr() as usize;
        let end = start + buf.len();
        let aligned_start = start.div_ceil(HUGE) * HUGE;
        let aligned_end = end / HUGE * HUGE;
        if aligned_end > aligned_start {
            // SAFETY: the range lies inside `buf`, which we borrow mutably; MADV_HUGEPAGE changes
            // how future faults are served, never the contents.
            unsafe {
                libc::madvise(
                    aligned_start as *mut libc::c_void,
                    aligned_end - aligned_start,
                    libc::MADV_HUGEPAGE,
                );
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = buf;
}
