//! Known vectors: CRC-32C check values, and records produced by tensorboard's own Python writer
//! (`event_pb2.Event(...).SerializeToString()` framed by `RecordWriter`).

#![allow(clippy::unwrap_used)]

use super::*;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn framed(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    frame_into(&mut out, data);
    out
}

#[test]
fn crc32c_check_values() {
    assert_eq!(crc32c(b""), 0);
    assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA); // RFC 3720 B.4
    assert_eq!(crc32c(&[0xffu8; 32]), 0x62A8_AB43);
    let ascending: Vec<u8> = (0..32).collect();
    assert_eq!(crc32c(&ascending), 0x46DD_794E);
    // tensorboard.compat.tensorflow_stub.pywrap_tensorflow.masked_crc32c
    assert_eq!(masked_crc32c(b"123456789"), 0xC78A_B0E5);
    assert_eq!(masked_crc32c(b""), 0xA282_EAD8);
}

#[test]
fn crc32c_slicing_matches_bytewise_on_every_length_and_alignment() {
    let data: Vec<u8> = (0..300u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let bytewise = |d: &[u8]| {
        let mut crc = !0u32;
        for &b in d {
            crc = (crc >> 8) ^ CRC_TABLE[0][((crc ^ b as u32) & 0xff) as usize];
        }
        !crc
    };
    for start in 0..9 {
        for end in start..data.len() {
            assert_eq!(crc32c(&data[start..end]), bytewise(&data[start..end]));
        }
    }
}

#[test]
fn scalar_event_matches_tensorboards_python_writer() {
    // Event(wall_time=1.5, step=7, summary=Summary(value=[Value(tag="loss", simple_value=0.25)]))
    let proto = hex("09000000000000f83f10072a0d0a0b0a046c6f7373150000803e");
    assert_eq!(scalar_event("loss", 0.25, Some(7), 1.5), proto);
    let record =
        hex("1a00000000000000129bd82d09000000000000f83f10072a0d0a0b0a046c6f7373150000803ec9d07b8d");
    assert_eq!(framed(&proto), record);
}

#[test]
fn negative_step_and_nested_tag_match_tensorboards_python_writer() {
    // Event(wall_time=2.0, step=-3, summary=Summary(value=[Value(tag="a/b", simple_value=-1e30)]))
    let proto = hex("09000000000000004010fdffffffffffffffff012a0c0a0a0a03612f6215caf249f1");
    assert_eq!(scalar_event("a/b", -1e30, Some(-3), 2.0), proto);
    let record = hex(
        "220000000000000078113dfd09000000000000004010fdffffffffffffffff012a0c0a0a0a03612f6215caf249f166dc2901",
    );
    assert_eq!(framed(&proto), record);
}

#[test]
fn step_zero_and_no_step_are_omitted_as_protobuf_does() {
    assert_eq!(
        scalar_event("x", 1.0, Some(0), 1.5),
        scalar_event("x", 1.0, None, 1.5)
    );
}

#[test]
fn file_version_event_matches_tensorboards_python_writer() {
    // Event(wall_time=1700000000.25, file_version="brain.Event:2",
    //       source_metadata=SourceMetadata(writer="ferrotrain"))
    let proto = hex("0900001040fc54d9411a0d627261696e2e4576656e743a32520c0a0a666572726f747261696e");
    assert_eq!(file_version_event(1_700_000_000.25, "ferrotrain"), proto);
    let record = hex(
        "2600000000000000734fe3000900001040fc54d9411a0d627261696e2e4576656e743a32520c0a0a666572726f747261696e90dfff45",
    );
    assert_eq!(framed(&proto), record);
}

/// Split a file into its records, checking both CRCs of each.
fn records(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let len_bytes = &bytes[at..at + 8];
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
        let len_crc = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap());
        assert_eq!(len_crc, masked_crc32c(len_bytes));
        let data = &bytes[at + 12..at + 12 + len];
        let data_crc = u32::from_le_bytes(bytes[at + 12 + len..at + 16 + len].try_into().unwrap());
        assert_eq!(data_crc, masked_crc32c(data));
        out.push(data.to_vec());
        at += 16 + len;
    }
    out
}

fn temp_dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("ferrotrain-tfevents-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn writer_appends_records_in_order_and_flushes() {
    let dir = temp_dir("order");
    let path = dir.join("events.out.tfevents.1.host.1.0");
    let mut w = EventWriter::create(&path, "ferrotrain").unwrap();
    w.add_scalars(&[("a".into(), 1.0), ("b".into(), 2.0)], Some(1), 10.0)
        .unwrap();
    w.add_events(&[b"raw-event"]).unwrap();
    w.flush().unwrap();
    let got = records(&std::fs::read(&path).unwrap());
    assert_eq!(got.len(), 4);
    assert!(got[0]
        .windows(FILE_VERSION.len())
        .any(|s| s == FILE_VERSION.as_bytes()));
    assert_eq!(got[1], scalar_event("a", 1.0, Some(1), 10.0));
    assert_eq!(got[2], scalar_event("b", 2.0, Some(1), 10.0));
    assert_eq!(got[3], b"raw-event");
    for step in 2..100 {
        w.add_scalars(&[("a".into(), step as f32)], Some(step), 10.0)
            .unwrap();
    }
    w.close().unwrap();
    w.close().unwrap(); // idempotent
    assert!(w.closed());
    let got = records(&std::fs::read(&path).unwrap());
    assert_eq!(got.len(), 4 + 98);
    assert_eq!(got[101], scalar_event("a", 99.0, Some(99), 10.0));
    assert!(w.add_scalars(&[("a".into(), 1.0)], Some(1), 1.0).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_existing_file_is_never_overwritten() {
    let dir = temp_dir("exists");
    let path = dir.join("events.out.tfevents.x");
    std::fs::write(&path, b"keep").unwrap();
    assert!(EventWriter::create(&path, "ferrotrain").is_err());
    assert_eq!(std::fs::read(&path).unwrap(), b"keep");
    assert!(EventWriter::create(&dir.join("missing").join("x"), "ferrotrain").is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(target_os = "linux")]
#[test]
fn a_write_error_is_reported_by_later_calls() {
    // /dev/full: every write fails with ENOSPC.
    let Ok(file) = OpenOptions::new().write(true).open("/dev/full") else {
        return;
    };
    let (tx, rx) = mpsc::channel();
    let error: SharedError = Arc::default();
    let thread_error = Arc::clone(&error);
    let handle = std::thread::spawn(move || {
        run(
            BufWriter::with_capacity(16, file),
            rx,
            &thread_error,
            Path::new("/dev/full"),
        )
    });
    let mut w = EventWriter {
        path: "/dev/full".into(),
        tx: Some(tx),
        handle: Some(handle),
        error,
        pid: std::process::id(),
    };
    w.add_scalars(&[("a".into(), 1.0)], Some(1), 1.0).unwrap();
    let err = w.flush().unwrap_err();
    assert!(err.to_string().contains("/dev/full"), "{err}");
    assert!(w.add_scalars(&[("a".into(), 1.0)], Some(1), 1.0).is_err());
    assert!(w.close().is_err());
}
