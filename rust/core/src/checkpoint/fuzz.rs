//! A bounded, corpus-driven fuzz target for the checkpoint reader, run by `cargo test`.
//!
//! cargo-fuzz needs a nightly compiler; this target needs none. It starts from the committed seed
//! files in `rust/core/fuzz-corpus/` (real checkpoints written by `ferrotrain.checkpoint.save`,
//! see the folder's README), applies a reproducible stream of byte-level and header-aware mutations
//! (flips, truncations, insertions, a forged length prefix, absurd shapes and offsets, unknown
//! dtypes, overlapping ranges, duplicated or missing metadata), and checks after each case that the
//! reader returned `Ok` or `Err` (never a panic), quickly, and without any allocation much larger
//! than the file itself (a hostile header must not make the reader reserve memory it names).
//! It prints the number of cases run.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::io::{check_bytes, open_checkpoint};

/// Cases per run, and a wall-clock bound so a slow CI machine still finishes.
const CASES: usize = 20_000;
const TIME_BOUND: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------- allocation watch
// The test binary's allocator records the largest single allocation made by the thread that
// asked for it (a thread-local switch, so tests running in parallel do not interfere).
struct Watch;

thread_local! {
    static WATCHING: Cell<bool> = const { Cell::new(false) };
}
static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the bookkeeping touches
// only a const-initialised thread-local and an atomic, neither of which allocates.
unsafe impl GlobalAlloc for Watch {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn note(size: usize) {
    if WATCHING.try_with(Cell::get).unwrap_or(false) {
        LARGEST.fetch_max(size, Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Watch = Watch;

/// Run `f` and return its result with the largest allocation it made on this thread.
fn watched<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.store(0, Ordering::Relaxed);
    WATCHING.with(|w| w.set(true));
    let out = f();
    WATCHING.with(|w| w.set(false));
    (out, LARGEST.load(Ordering::Relaxed))
}

// ---------------------------------------------------------------- mutations
/// xorshift64*: reproducible without a dependency; the seed is fixed so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const HOSTILE_NUMBERS: [&str; 8] = [
    "18446744073709551615",
    "9223372036854775807",
    "4294967296",
    "100000000000",
    "-1",
    "1e30",
    "0",
    "340282366920938463463374607431768211456",
];
const HOSTILE_TOKENS: [&str; 10] = [
    "\"F128\"", "\"complex32\"", "null", "[]", "{}", "\"\"", "[[1]]", "true", "\"__metadata__\"",
    "\"data_offsets\"",
];

fn header_range(file: &[u8]) -> Option<(usize, usize)> {
    let prefix: [u8; 8] = file.get(..8)?.try_into().ok()?;
    let n = usize::try_from(u64::from_le_bytes(prefix)).ok()?;
    let end = 8usize.checked_add(n)?;
    (end <= file.len()).then_some((8, end))
}

/// Replace the `k`-th run of ASCII digits inside the JSON header with `with`, fixing the length
/// prefix so the mutation reaches the validation behind the length check.
fn replace_number(file: &[u8], rng: &mut Rng, with: &str) -> Option<Vec<u8>> {
    let (start, end) = header_range(file)?;
    let header = &file[start..end];
    let mut runs = Vec::new();
    let mut i = 0;
    while i < header.len() {
        if header[i].is_ascii_digit() {
            let s = i;
            while i < header.len() && header[i].is_ascii_digit() {
                i += 1;
            }
            runs.push((s, i));
        } else {
            i += 1;
        }
    }
    if runs.is_empty() {
        return None;
    }
    let (s, e) = runs[rng.below(runs.len())];
    Some(splice_header(file, start + s, start + e, with.as_bytes()))
}

/// Replace `[s, e)` (inside the header) with `with`, rewriting the length prefix.
fn splice_header(file: &[u8], s: usize, e: usize, with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(file.len() + with.len());
    out.extend_from_slice(&file[..s]);
    out.extend_from_slice(with);
    out.extend_from_slice(&file[e..]);
    if let Some((_, end)) = header_range(file) {
        let new_len = (end - 8 + with.len()).saturating_sub(e - s) as u64;
        out[..8].copy_from_slice(&new_len.to_le_bytes());
    }
    out
}

/// Replace a JSON string or value token at a random quote with a hostile token.
fn replace_token(file: &[u8], rng: &mut Rng) -> Option<Vec<u8>> {
    let (start, end) = header_range(file)?;
    let header = &file[start..end];
    let quotes: Vec<usize> = header
        .iter()
        .enumerate()
        .filter(|&(_, &b)| b == b'"')
        .map(|(i, _)| i)
        .collect();
    if quotes.len() < 2 {
        return None;
    }
    let q = rng.below(quotes.len() - 1);
    let (s, e) = (quotes[q], quotes[q + 1] + 1);
    let token = HOSTILE_TOKENS[rng.below(HOSTILE_TOKENS.len())];
    Some(splice_header(file, start + s, start + e, token.as_bytes()))
}

fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut file = seed.to_vec();
    let rounds = 1 + rng.below(3);
    for _ in 0..rounds {
        let n = file.len();
        match rng.below(9) {
            0 | 1 if n > 0 => {
                let i = rng.below(n);
                file[i] ^= 1 << rng.below(8);
            }
            2 if n > 0 => {
                let i = rng.below(n);
                file[i] = rng.next() as u8;
            }
            3 => file.truncate(rng.below(n + 1)),
            4 => {
                let i = rng.below(n + 1);
                let len = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                file.splice(i..i, bytes);
            }
            5 if n >= 8 => {
                // A forged length prefix: small, just past the end, or absurd.
                let v = match rng.below(3) {
                    0 => rng.next() % (n as u64 + 16),
                    1 => n as u64 - 8 + 1 + rng.below(8) as u64,
                    _ => rng.next(),
                };
                file[..8].copy_from_slice(&v.to_le_bytes());
            }
            6 | 7 => {
                let with = HOSTILE_NUMBERS[rng.below(HOSTILE_NUMBERS.len())].to_string();
                let with = if rng.below(2) == 0 {
                    with
                } else {
                    // A plausible but wrong offset: overlapping, reversed or out of range.
                    (rng.next() % (n as u64 * 2 + 1)).to_string()
                };
                if let Some(f) = replace_number(&file, rng, &with) {
                    file = f;
                }
            }
            _ => {
                if let Some(f) = replace_token(&file, rng) {
                    file = f;
                }
            }
        }
    }
    file
}

// ---------------------------------------------------------------- the target
fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz-corpus/legacy");
    let mut seeds: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read the fuzz corpus {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "ckpt"))
        .map(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (name, bytes)
        })
        .collect();
    seeds.sort();
    seeds
}

#[test]
fn corpus_seeds_are_valid_checkpoints() {
    let seeds = corpus();
    assert!(seeds.len() >= 4, "the committed corpus has {} seeds", seeds.len());
    for (name, bytes) in &seeds {
        if let Err(e) = check_bytes(bytes, true) {
            panic!("seed {name} does not read back: {}", e.0);
        }
    }
}

#[test]
fn fuzz_checkpoint_reader() {
    let seeds = corpus();
    assert!(!seeds.is_empty());
    let mut rng = Rng(0x5EED_F00D_CAFE_0001);
    let started = Instant::now();
    let (mut cases, mut rejected) = (0usize, 0usize);
    let dir = std::env::temp_dir().join(format!("ferrotrain-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    while cases < CASES && started.elapsed() < TIME_BOUND {
        let (name, seed) = &seeds[rng.below(seeds.len())];
        let file = mutate(seed, &mut rng);
        let t0 = Instant::now();
        let (result, largest) = watched(|| check_bytes(&file, true));
        let took = t0.elapsed();
        // Bounded memory: nothing the header names is reserved before it is checked against
        // the file's real size (JSON parsing costs a small multiple of the header's length).
        assert!(
            largest <= 8 * file.len() + (1 << 16),
            "case {cases} (seed {name}): a {} byte file made a {largest} byte allocation",
            file.len()
        );
        assert!(took < Duration::from_secs(2), "case {cases} (seed {name}) took {took:?}");
        if result.is_err() {
            rejected += 1;
        }
        // Every 50th case also goes through the file path (bounded reads, memory map).
        if cases % 50 == 0 {
            let path = dir.join("case.ckpt");
            std::fs::write(&path, &file).unwrap_or_else(|e| panic!("{e}"));
            let f = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{e}"));
            let (opened, largest) = watched(|| open_checkpoint(&f, &path, true));
            assert!(largest <= 8 * file.len() + (1 << 16), "case {cases}: {largest} bytes");
            assert_eq!(opened.is_ok(), result.is_ok(), "case {cases}: file and bytes disagree");
            if let Err(e) = opened {
                assert!(e.to_string().contains("case.ckpt"), "error does not name the file: {e}");
            }
        }
        cases += 1;
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "fuzz_checkpoint_reader: {cases} cases from {} seeds in {:.1?} ({rejected} rejected as corrupt)",
        seeds.len(),
        started.elapsed()
    );
    assert!(cases >= 1_000, "only {cases} cases ran within {TIME_BOUND:?}");
    assert!(rejected > cases / 2, "the mutations are too weak: {rejected} of {cases} rejected");
}

// ---------------------------------------------------------------- the torch (zip) reader
// The same loop over torch-format seeds (`fuzz-corpus/torch/`, written by
// `scripts/make-fuzz-corpus.py`), with zip- and pickle-aware mutations: central-directory fields
// (sizes, offsets, CRCs, counts) overwritten with hostile numbers, and `data.pkl` opcodes
// replaced, inserted or cut with its CRC fixed up so the case reaches the pickle machine.

fn torch_corpus() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz-corpus/torch");
    let mut seeds: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read the fuzz corpus {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "ckpt"))
        .map(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            (name, std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        })
        .collect();
    seeds.sort();
    seeds
}

/// The data.pkl entry: (local header offset, data offset, size, central record offset).
fn pickle_entry(file: &[u8]) -> Option<(usize, usize, usize, usize)> {
    let cd = file.windows(4).position(|w| w == b"PK\x01\x02")?;
    let name_at = file[cd..].windows(8).position(|w| w == b"data.pkl")? + cd;
    let rec = name_at.checked_sub(46 + "archive/".len())?;
    let rd32 = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(file.get(at..at + 4)?.try_into().ok()?))
    };
    let size = rd32(rec + 24)? as usize;
    let local = rd32(rec + 42)? as usize;
    let n = u16::from_le_bytes(file.get(local + 26..local + 28)?.try_into().ok()?) as usize;
    let e = u16::from_le_bytes(file.get(local + 28..local + 30)?.try_into().ok()?) as usize;
    Some((local, local + 30 + n + e, size, rec))
}

/// Rewrite data.pkl's bytes in place (same length) and fix both of its CRC fields.
fn with_pickle(file: &mut [u8], edit: impl FnOnce(&mut [u8])) {
    let Some((local, at, size, rec)) = pickle_entry(file) else {
        return;
    };
    let Some(body) = file.get_mut(at..at + size) else {
        return;
    };
    edit(body);
    let crc = crc32fast::hash(body).to_le_bytes();
    file[local + 14..local + 18].copy_from_slice(&crc);
    file[rec + 16..rec + 20].copy_from_slice(&crc);
}

const OPCODES: &[u8] = b"(.0}])tNJKMGXqrhjaesucRbQ\x80\x85\x86\x87\x88\x89\x8a\x8b\x8c\x8d\x93\x94\x95iocdgpIFLSTUV";

fn mutate_torch(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut file = seed.to_vec();
    for _ in 0..1 + rng.below(3) {
        let n = file.len();
        match rng.below(8) {
            0 if n > 0 => {
                let i = rng.below(n);
                file[i] ^= 1 << rng.below(8);
            }
            1 => file.truncate(rng.below(n + 1)),
            2 => {
                // A central-directory or end-record field: a hostile number.
                if let Some(cd) = file.windows(4).position(|w| w == b"PK\x01\x02") {
                    let at = cd + rng.below(n - cd);
                    let v: u32 = match rng.below(4) {
                        0 => u32::MAX,
                        1 => rng.next() as u32,
                        2 => (rng.next() % (n as u64 * 2 + 1)) as u32,
                        _ => 0,
                    };
                    if let Some(s) = file.get_mut(at..at + 4) {
                        s.copy_from_slice(&v.to_le_bytes());
                    }
                }
            }
            3 | 4 => {
                let op = OPCODES[rng.below(OPCODES.len())];
                let r = rng.next();
                with_pickle(&mut file, |b| {
                    if !b.is_empty() {
                        let i = (r as usize) % b.len();
                        b[i] = op;
                    }
                });
            }
            5 => {
                let (a, c) = (rng.next() as usize, rng.next() as u8);
                with_pickle(&mut file, |b| {
                    if !b.is_empty() {
                        let i = a % b.len();
                        b[i] = c;
                    }
                });
            }
            6 => {
                // Shift a run of the pickle left by one: a cut opcode stream of the same length.
                let a = rng.next() as usize;
                with_pickle(&mut file, |b| {
                    if b.len() > 2 {
                        let i = a % (b.len() - 1);
                        b.copy_within(i + 1.., i);
                    }
                });
            }
            _ => {
                let i = rng.below(n + 1);
                let bytes: Vec<u8> = (0..1 + rng.below(16)).map(|_| rng.next() as u8).collect();
                file.splice(i..i, bytes);
            }
        }
    }
    file
}

#[test]
fn torch_corpus_seeds_are_valid_checkpoints() {
    let seeds = torch_corpus();
    assert!(seeds.len() >= 5, "the committed corpus has {} seeds", seeds.len());
    for (name, bytes) in &seeds {
        if let Err(e) = super::torchzip::check_bytes(bytes) {
            panic!("seed {name} does not read back: {}", e.0);
        }
    }
}

#[test]
fn fuzz_torch_checkpoint_reader() {
    let seeds = torch_corpus();
    assert!(!seeds.is_empty());
    let mut rng = Rng(0x5EED_F00D_CAFE_0002);
    let started = Instant::now();
    let (mut cases, mut rejected, mut pickle_errors) = (0usize, 0usize, 0usize);
    while cases < CASES && started.elapsed() < TIME_BOUND {
        let (name, seed) = &seeds[rng.below(seeds.len())];
        let file = mutate_torch(seed, &mut rng);
        let t0 = Instant::now();
        let (result, largest) = watched(|| super::torchzip::check_bytes(&file));
        let took = t0.elapsed();
        // Bounded memory: nothing a field names is reserved before it is checked against the
        // file's size; the decoded tree is bounded by a multiple of data.pkl's length.
        assert!(
            largest <= 160 * file.len() + (4 << 20),
            "case {cases} (seed {name}): a {} byte file made a {largest} byte allocation",
            file.len()
        );
        assert!(took < Duration::from_secs(2), "case {cases} (seed {name}) took {took:?}");
        if let Err(e) = result {
            rejected += 1;
            if e.0.contains("data.pkl at byte") {
                pickle_errors += 1;
            }
        }
        cases += 1;
    }
    println!(
        "fuzz_torch_checkpoint_reader: {cases} cases from {} seeds in {:.1?} ({rejected} rejected, \
         {pickle_errors} of them by the pickle machine)",
        seeds.len(),
        started.elapsed()
    );
    assert!(cases >= 1_000, "only {cases} cases ran within {TIME_BOUND:?}");
    assert!(rejected > cases / 2, "the mutations are too weak: {rejected} of {cases} rejected");
    assert!(pickle_errors > cases / 10, "too few cases reached the pickle machine: {pickle_errors}");
}
