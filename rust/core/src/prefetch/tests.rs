use super::*;
use proptest::prelude::*;
use std::sync::Arc;
use std::thread;

const TICK: Duration = Duration::from_millis(5);

/// Drive a `Lookahead` synchronously the way `depth=0` does: read one item only when nothing can
/// be handed out. `source` is the items, then `Err(e)` to fail at that point.
fn run_sync(source: &[Result<u32, &'static str>], len: Option<u64>) -> Vec<Pop<u32, &'static str>> {
    let mut q = Lookahead::new(0, len);
    let mut src = source.iter();
    let mut out = vec![];
    loop {
        match q.pop() {
            Pop::NotReady => match src.next() {
                Some(Ok(v)) => q.push(*v),
                Some(Err(e)) => q.fail(*e),
                None => q.finish(),
            },
            Pop::Exhausted => return out,
            done => out.push(done),
        }
    }
}

/// Run a real producer thread and consume everything.
fn run_threaded(source: Vec<Result<u32, &'static str>>, depth: usize, len: Option<u64>) -> Vec<Pop<u32, &'static str>> {
    let ch = Arc::new(Channel::new(depth, len));
    let producer = {
        let ch = Arc::clone(&ch);
        thread::spawn(move || {
            let mut src = source.into_iter();
            while ch.wait_for_room() {
                match src.next() {
                    Some(Ok(v)) => {
                        if !ch.push(v) {
                            break;
                        }
                    }
                    Some(Err(e)) => ch.fail(e),
                    None => ch.finish(),
                }
            }
            ch.producer_exit();
        })
    };
    let mut out = vec![];
    loop {
        match ch.pop_timeout(TICK) {
            Wait::TimedOut => continue,
            Wait::Done(Pop::Exhausted) => break,
            Wait::Done(p) => out.push(p),
        }
    }
    producer.join().unwrap();
    out
}

fn items(n: u32) -> Vec<Result<u32, &'static str>> {
    (0..n).map(Ok).collect()
}

fn expected(n: u32) -> Vec<Pop<u32, &'static str>> {
    (0..n).map(|i| Pop::Item { item: i, is_last: i + 1 == n }).collect()
}

#[test]
fn unsized_source_marks_only_the_final_item_last() {
    for n in [0, 1, 2, 7] {
        assert_eq!(run_sync(&items(n), None), expected(n), "n={n}");
        for depth in [1, 2, 5] {
            assert_eq!(run_threaded(items(n), depth, None), expected(n), "n={n} depth={depth}");
        }
    }
}

#[test]
fn sized_source_uses_the_length() {
    for n in [0u32, 1, 2, 7] {
        assert_eq!(run_sync(&items(n), Some(u64::from(n))), expected(n));
        assert_eq!(run_threaded(items(n), 2, Some(u64::from(n))), expected(n));
    }
}

#[test]
fn sized_source_hands_out_without_reading_ahead() {
    let mut q: Lookahead<u32, ()> = Lookahead::new(2, Some(3));
    q.push(0);
    // The end is not known yet, but the length says item 0 is not last.
    assert_eq!(q.pop(), Pop::Item { item: 0, is_last: false });
    let mut u: Lookahead<u32, ()> = Lookahead::new(2, None);
    u.push(0);
    assert_eq!(u.pop(), Pop::NotReady);
    u.push(1);
    assert_eq!(u.pop(), Pop::Item { item: 0, is_last: false });
}

#[test]
fn a_length_that_is_too_long_still_marks_the_end_when_it_was_read() {
    let mut q: Lookahead<u32, ()> = Lookahead::new(2, Some(10));
    q.push(0);
    q.finish();
    assert_eq!(q.pop(), Pop::Item { item: 0, is_last: true });
    assert_eq!(q.pop(), Pop::Exhausted);
}

#[test]
fn error_is_delivered_at_its_position_then_exhausted() {
    let src = vec![Ok(0), Ok(1), Err("boom"), Ok(3)];
    let want = vec![Pop::Item { item: 0, is_last: false }, Pop::Item { item: 1, is_last: false }, Pop::Error("boom")];
    assert_eq!(run_sync(&src, None), want);
    assert_eq!(run_sync(&src, Some(4)), want);
    assert_eq!(run_threaded(src.clone(), 1, None), want);
    assert_eq!(run_threaded(src, 3, Some(4)), want);
    let mut q: Lookahead<u32, &str> = Lookahead::new(1, None);
    q.fail("first");
    assert_eq!(q.pop(), Pop::Error("first"));
    assert_eq!(q.pop(), Pop::Exhausted);
    assert_eq!(q.pop(), Pop::Exhausted);
}

#[test]
fn producer_never_holds_more_than_its_capacity() {
    for (depth, len, cap) in [(1, Some(5), 1), (2, Some(5), 2), (2, None, 3), (0, None, 2)] {
        let mut q: Lookahead<u32, ()> = Lookahead::new(depth, len);
        let mut n = 0;
        while q.has_room() {
            q.push(n);
            n += 1;
        }
        assert_eq!(q.ready(), cap, "depth={depth} len={len:?}");
    }
}

#[test]
fn stop_releases_a_producer_waiting_for_room_and_drain_returns_the_rest() {
    let ch: Arc<Channel<u32, ()>> = Arc::new(Channel::new(1, Some(100)));
    let producer = {
        let ch = Arc::clone(&ch);
        thread::spawn(move || {
            let mut n = 0;
            while ch.wait_for_room() {
                if !ch.push(n) {
                    break;
                }
                n += 1;
            }
            ch.producer_exit();
            n
        })
    };
    assert_eq!(ch.pop_timeout(Duration::from_secs(5)), Wait::Done(Pop::Item { item: 0, is_last: false }));
    // The producer refills the queue and then blocks on it.
    while ch.ready() < 1 {
        thread::sleep(TICK);
    }
    assert!(!ch.wait_producer_exit(TICK));
    ch.stop();
    assert!(ch.wait_producer_exit(Duration::from_secs(5)));
    let read = producer.join().unwrap();
    let (rest, err) = ch.drain();
    assert_eq!(rest, vec![1]);
    assert_eq!(read, 2);
    assert!(err.is_none());
}

#[test]
fn consumer_wait_times_out_while_the_producer_is_busy() {
    let ch: Channel<u32, ()> = Channel::new(2, None);
    assert_eq!(ch.pop_timeout(TICK), Wait::TimedOut);
    ch.push(7);
    // Unsized: item 7's successor is not read yet, so it cannot be handed out.
    assert_eq!(ch.pop_timeout(TICK), Wait::TimedOut);
    ch.finish();
    assert_eq!(ch.pop_timeout(TICK), Wait::Done(Pop::Item { item: 7, is_last: true }));
}

#[test]
fn a_stopped_producer_ends_the_stream() {
    let ch: Channel<u32, ()> = Channel::new(2, None);
    ch.stop();
    assert!(!ch.wait_for_room());
    ch.producer_exit();
    assert_eq!(ch.pop_timeout(TICK), Wait::Done(Pop::Exhausted));
}

proptest! {
    #[test]
    fn threaded_matches_sync(n in 0u32..40, fail_at in proptest::option::of(0u32..40), depth in 0usize..5, sized in any::<bool>()) {
        let mut src = items(n);
        if let Some(k) = fail_at.filter(|k| *k <= n) {
            src.insert(k as usize, Err("boom"));
        }
        let len = sized.then_some(u64::from(n));
        let sync = run_sync(&src, len);
        let threaded = run_threaded(src, depth, len);
        prop_assert_eq!(&sync, &threaded);
        // Order and completeness: the items up to the error, each once, in order.
        let got: Vec<u32> = sync.iter().filter_map(|p| match p { Pop::Item { item, .. } => Some(*item), _ => None }).collect();
        let stop = fail_at.filter(|k| *k <= n).unwrap_or(n);
        prop_assert_eq!(got, (0..stop).collect::<Vec<_>>());
        let lasts = sync.iter().filter(|p| matches!(p, Pop::Item { is_last: true, .. })).count();
        // An error right after the final item: the length still says that item is last; without a
        // length, the item is followed by something (the error), so it is not.
        let failed_at_end = fail_at == Some(n);
        prop_assert_eq!(lasts, usize::from(stop == n && n > 0 && (sized || !failed_at_end)));
    }
}
