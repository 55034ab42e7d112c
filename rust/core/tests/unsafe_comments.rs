//! Every `unsafe` block, impl and function in the sources of both crates (this one and the
//! binding crate, `rust/src`) says why it is sound: a `SAFETY:` comment (or a `# Safety` doc
//! section for an `unsafe fn`) within the few lines above.

#![allow(clippy::panic)] // a test: a failure is a panic

use std::path::{Path, PathBuf};

const WINDOW: usize = 8;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_unsafe_has_a_safety_comment() {
    let mut files = Vec::new();
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    rust_files(&here.join("src"), &mut files);
    rust_files(&here.join("../src"), &mut files);
    assert!(!files.is_empty());
    let mut missing = Vec::new();
    let mut seen = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            let is_unsafe = ["unsafe {", "unsafe impl", "unsafe fn", "unsafe extern"]
                .iter()
                .any(|k| code.contains(k));
            if !is_unsafe {
                continue;
            }
            seen += 1;
            let start = i.saturating_sub(WINDOW);
            let explained = lines[start..=i]
                .iter()
                .any(|l| l.contains("SAFETY") || l.contains("# Safety"));
            if !explained {
                missing.push(format!("{}:{}: {}", file.display(), i + 1, line.trim()));
            }
        }
    }
    assert!(seen > 0);
    assert!(missing.is_empty(), "unsafe without a SAFETY comment:\n{}", missing.join("\n"));
}
