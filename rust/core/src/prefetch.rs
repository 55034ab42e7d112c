//! The prefetch queue: the bounded, ordered hand-off between a producer that reads batches and the
//! consumer that trains on them, and the rule that says whether a batch is its epoch's last.
//!
//! Two layers, both plain Rust (no interpreter, tested with `cargo test`):
//! - [`Lookahead`] is the single-threaded state machine: a FIFO of ready items, how the source
//!   ended (still open, exhausted, failed), and the `is_last` rule. The synchronous path
//!   (`depth=0`) drives it directly.
//! - [`Channel`] wraps it in a mutex and two condition variables for one producer thread and one
//!   consumer; every wait is timed by the caller, so the consumer can check for Ctrl-C between
//!   waits and never blocks for good.
//!
//! It does not own the thread, the Python iterator or the interpreter lock: the PyO3 layer
//! (`rust/src/prefetch.rs`) does.
//!
//! The `is_last` rule: when the source's length is known, a batch is last when its position + 1
//! reaches that length (Lightning's rule), or when the end was already read right after it. When
//! the length is unknown, a batch is handed out only once the item after it (or the end) has been
//! read, so the producer keeps one more item than `depth` ready. An error from the source is
//! delivered in order, at the position where it happened; the batch before it is not last.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// What the consumer gets from one pop.
#[derive(Debug, PartialEq)]
pub enum Pop<T, E> {
    /// The next item, and whether it is the last one of the source.
    Item { item: T, is_last: bool },
    /// The source failed at this position; later pops return `Exhausted`.
    Error(E),
    /// Every item was handed out (or the error was).
    Exhausted,
    /// Nothing can be handed out yet: the producer has to read more first.
    NotReady,
}

/// How the source ended, as far as the producer has read it.
#[derive(Debug)]
enum Tail<E> {
    Open,
    Finished,
    Failed(E),
    /// The error was handed out; nothing follows.
    Spent,
}

/// The single-threaded state machine: ready items in order, the source's end, the `is_last` rule.
#[derive(Debug)]
pub struct Lookahead<T, E> {
    items: VecDeque<T>,
    tail: Tail<E>,
    /// Items handed out so far.
    delivered: u64,
    /// The source's length, when it has one.
    len: Option<u64>,
    /// How many items the producer may hold ready.
    capacity: usize,
}

impl<T, E> Lookahead<T, E> {
    /// `depth` is the number of batches kept ready; a source without a length gets one more so the
    /// consumer can tell whether a batch is the last without waiting on a full queue.
    pub fn new(depth: usize, len: Option<u64>) -> Self {
        let capacity = depth.max(1) + usize::from(len.is_none());
        Self { items: VecDeque::with_capacity(capacity), tail: Tail::Open, delivered: 0, len, capacity }
    }

    /// Whether the producer should read another item now.
    pub fn has_room(&self) -> bool {
        matches!(self.tail, Tail::Open) && self.items.len() < self.capacity
    }

    /// Whether the producer has not yet seen the source's end or an error.
    pub fn is_open(&self) -> bool {
        matches!(self.tail, Tail::Open)
    }

    /// Items read and not yet handed out.
    pub fn ready(&self) -> usize {
        self.items.len()
    }

    /// Items handed out so far.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    pub fn push(&mut self, item: T) {
        self.items.push_back(item);
    }

    /// The source is exhausted.
    pub fn finish(&mut self) {
        if matches!(self.tail, Tail::Open) {
            self.tail = Tail::Finished;
        }
    }

    /// The source raised; the error is handed out after the items already read.
    pub fn fail(&mut self, err: E) {
        if matches!(self.tail, Tail::Open) {
            self.tail = Tail::Failed(err);
        }
    }

    /// Hand out the next item, the error, or say why nothing can be handed out.
    pub fn pop(&mut self) -> Pop<T, E> {
        if self.items.is_empty() {
            return match self.tail {
                Tail::Open => Pop::NotReady,
                Tail::Finished | Tail::Spent => Pop::Exhausted,
                Tail::Failed(_) => match std::mem::replace(&mut self.tail, Tail::Spent) {
                    Tail::Failed(e) => Pop::Error(e),
                    _ => Pop::Exhausted,
                },
            };
        }
        let Some(is_last) = self.front_is_last() else {
            return Pop::NotReady;
        };
        match self.items.pop_front() {
            Some(item) => {
                self.delivered += 1;
                Pop::Item { item, is_last }
            }
            None => Pop::NotReady,
        }
    }

    /// Whether the front item (there is one) is the last, or `None` when that is not known yet.
    fn front_is_last(&self) -> Option<bool> {
        let end_follows = self.items.len() == 1 && matches!(self.tail, Tail::Finished);
        let next_known = self.items.len() > 1 || !matches!(self.tail, Tail::Open);
        match self.len {
            Some(len) => Some(self.delivered + 1 >= len || end_follows),
            None if next_known => Some(end_follows),
            None => None,
        }
    }

    /// Take every item not handed out and the pending error, leaving the queue exhausted.
    pub fn drain(&mut self) -> (Vec<T>, Option<E>) {
        let items = self.items.drain(..).collect();
        let err = match std::mem::replace(&mut self.tail, Tail::Spent) {
            Tail::Failed(e) => Some(e),
            _ => None,
        };
        (items, err)
    }
}

/// What a timed consumer wait ended with.
#[derive(Debug, PartialEq)]
pub enum Wait<T, E> {
    Done(Pop<T, E>),
    /// The timeout passed with nothing to hand out; check for interrupts and wait again.
    TimedOut,
}

#[derive(Debug)]
struct State<T, E> {
    queue: Lookahead<T, E>,
    /// The consumer asked the producer to stop.
    stopped: bool,
    /// The producer thread has left its loop and touches nothing more.
    producer_exited: bool,
}

/// The thread-safe queue between one producer thread and one consumer.
///
/// The producer calls [`Channel::wait_for_room`] before reading each item and stops when it
/// returns `false`; it reports each item with [`Channel::push`], the end with
/// [`Channel::finish`] or [`Channel::fail`], and calls [`Channel::producer_exit`] last. The
/// consumer pops with [`Channel::pop_timeout`], stops the producer with [`Channel::stop`] and
/// waits for it with [`Channel::wait_producer_exit`]. A poisoned mutex (a panic while holding it,
/// which no code here does) is recovered rather than propagated.
#[derive(Debug)]
pub struct Channel<T, E> {
    state: Mutex<State<T, E>>,
    /// Signalled when an item, the end or an error arrives, and when the producer exits.
    ready: Condvar,
    /// Signalled when the consumer takes an item or asks the producer to stop.
    room: Condvar,
}

impl<T, E> Channel<T, E> {
    pub fn new(depth: usize, len: Option<u64>) -> Self {
        Self {
            state: Mutex::new(State { queue: Lookahead::new(depth, len), stopped: false, producer_exited: false }),
            ready: Condvar::new(),
            room: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T, E>> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Producer: wait until there is room for one more item. `false` means stop reading (the
    /// consumer stopped, or the source already ended).
    pub fn wait_for_room(&self) -> bool {
        let mut st = self.lock();
        loop {
            if st.stopped || !st.queue.is_open() {
                return false;
            }
            if st.queue.has_room() {
                return true;
            }
            st = self.room.wait(st).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// Producer: one more item, in order. Returns `false` when the consumer has stopped (the item
    /// is kept so that the consumer disposes of it).
    pub fn push(&self, item: T) -> bool {
        let mut st = self.lock();
        st.queue.push(item);
        self.ready.notify_one();
        !st.stopped
    }

    /// Producer: the source is exhausted.
    pub fn finish(&self) {
        self.lock().queue.finish();
        self.ready.notify_one();
    }

    /// Producer: the source raised `err`.
    pub fn fail(&self, err: E) {
        self.lock().queue.fail(err);
        self.ready.notify_one();
    }

    /// Producer: the very last call of the producer thread.
    pub fn producer_exit(&self) {
        self.lock().producer_exited = true;
        self.ready.notify_all();
    }

    /// Consumer: the next item, the error or the end if one can be handed out now (`NotReady`
    /// otherwise); never waits, so it is safe to call without releasing other locks.
    pub fn try_pop(&self) -> Pop<T, E> {
        let mut st = self.lock();
        match st.queue.pop() {
            Pop::NotReady if st.producer_exited => Pop::Exhausted,
            Pop::NotReady => Pop::NotReady,
            done => {
                self.room.notify_one();
                done
            }
        }
    }

    /// Consumer: the next item, the error or the end, waiting at most `timeout` for it.
    pub fn pop_timeout(&self, timeout: Duration) -> Wait<T, E> {
        let mut st = self.lock();
        let mut waited = false;
        loop {
            match st.queue.pop() {
                Pop::NotReady if st.producer_exited => {
                    // The producer left without reading to the end (it was stopped): nothing more
                    // will come.
                    return Wait::Done(Pop::Exhausted);
                }
                Pop::NotReady if waited => return Wait::TimedOut,
                Pop::NotReady => {
                    waited = true;
                    st = match self.ready.wait_timeout(st, timeout) {
                        Ok((guard, _)) => guard,
                        Err(poisoned) => poisoned.into_inner().0,
                    };
                }
                done => {
                    self.room.notify_one();
                    return Wait::Done(done);
                }
            }
        }
    }

    /// Consumer: ask the producer to stop after the item it is reading.
    pub fn stop(&self) {
        self.lock().stopped = true;
        self.room.notify_all();
    }

    /// Consumer: wait at most `timeout` for the producer thread to leave its loop.
    pub fn wait_producer_exit(&self, timeout: Duration) -> bool {
        let st = self.lock();
        let (st, _) = match self.ready.wait_timeout_while(st, timeout, |s| !s.producer_exited) {
            Ok(r) => r,
            Err(poisoned) => poisoned.into_inner(),
        };
        st.producer_exited
    }

    /// Consumer: take what the producer left (items not handed out, a pending error).
    pub fn drain(&self) -> (Vec<T>, Option<E>) {
        self.lock().queue.drain()
    }

    /// Items ready to be handed out now.
    pub fn ready(&self) -> usize {
        self.lock().queue.ready()
    }
}

#[cfg(test)]
mod tests;
