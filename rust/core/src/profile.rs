//! The loop profiler's accumulator: where each training step's time goes.
//!
//! A `PhaseTimer` holds named phases (waiting for data, `training_step`, backward, each hook, ...)
//! and a stack of the phases now running. Time is *exclusive*: when a phase starts inside another
//! (a hook inside the closure inside `optimizer.step`), the outer phase stops counting until the
//! inner one ends, so the phases of a step never count the same nanosecond twice. A step's time
//! minus the phases recorded inside it is the loop's own overhead (the schedule, the Python glue
//! between hooks).
//!
//! It owns the clock and the sums, nothing else: which phases exist and where they start and stop
//! is the caller's business (the batch runner stamps the data wait; the Python side wraps hooks and
//! step parts in timers only when profiling is on). It never panics: a stop without a start, or a
//! step that ends with phases still open (an exception unwound them), is absorbed.

use std::time::Instant;

/// Sums for one phase.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PhaseStats {
    pub name: String,
    /// Times the phase ran (inside and outside steps).
    pub calls: u64,
    /// Exclusive nanoseconds spent inside training steps.
    pub in_step_ns: u64,
    /// Exclusive nanoseconds spent outside training steps (epoch hooks, sanity check, ...).
    pub outside_ns: u64,
}

impl PhaseStats {
    pub fn total_ns(&self) -> u64 {
        self.in_step_ns + self.outside_ns
    }
}

#[derive(Clone, Copy, Debug)]
struct Frame {
    phase: usize,
    /// When this frame last resumed counting (its start, or the end of its latest child).
    resumed_ns: u64,
}

/// One profiling session's accumulator. Stamps are nanoseconds from a monotonic clock
/// (`Instant`) read when the timer is made.
#[derive(Clone, Debug)]
pub struct PhaseTimer {
    origin: Instant,
    phases: Vec<PhaseStats>,
    stack: Vec<Frame>,
    /// Start of the running step, if one is running.
    step_start_ns: Option<u64>,
    steps: u64,
    step_ns: u64,
    /// Exclusive phase time recorded inside steps (so overhead = step_ns - this).
    phases_in_steps_ns: u64,
    /// Per phase, exclusive time charged during the running step: folded into `in_step_ns` when
    /// the step ends, or into `outside_ns` when it is cancelled.
    pending: Vec<u64>,
}

impl Default for PhaseTimer {
    fn default() -> Self {
        Self::new()
    }
}

impl PhaseTimer {
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
            phases: Vec::new(),
            stack: Vec::new(),
            step_start_ns: None,
            steps: 0,
            step_ns: 0,
            phases_in_steps_ns: 0,
            pending: Vec::new(),
        }
    }

    /// Nanoseconds since the timer was made (monotonic).
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The index of the phase called `name`, registering it on first use. Done once per phase at
    /// plan time; stamps then use the index.
    pub fn phase(&mut self, name: &str) -> usize {
        if let Some(i) = self.phases.iter().position(|p| p.name == name) {
            return i;
        }
        self.phases.push(PhaseStats { name: name.to_owned(), ..PhaseStats::default() });
        self.pending.push(0);
        self.phases.len() - 1
    }

    /// Charge `now - frame.resumed_ns` to the frame's phase.
    fn charge(&mut self, frame: Frame, now: u64) {
        let ns = now.saturating_sub(frame.resumed_ns);
        if self.step_start_ns.is_some() {
            if let Some(p) = self.pending.get_mut(frame.phase) {
                *p += ns;
            }
        } else if let Some(p) = self.phases.get_mut(frame.phase) {
            p.outside_ns += ns;
        }
    }

    /// Move the running step's charges into the step sums (`keep`) or outside them.
    fn fold_pending(&mut self, keep: bool) {
        for (p, ns) in self.phases.iter_mut().zip(self.pending.iter_mut()) {
            let ns = std::mem::take(ns);
            if keep {
                p.in_step_ns += ns;
                self.phases_in_steps_ns += ns;
            } else {
                p.outside_ns += ns;
            }
        }
    }

    /// Phase `phase` starts now; the running phase (if any) pauses. Unknown indices are ignored.
    pub fn enter(&mut self, phase: usize) {
        if phase >= self.phases.len() {
            return;
        }
        let now = self.now_ns();
        if let Some(top) = self.stack.last().copied() {
            self.charge(top, now);
        }
        if let Some(p) = self.phases.get_mut(phase) {
            p.calls += 1;
        }
        self.stack.push(Frame { phase, resumed_ns: now });
    }

    /// The innermost running phase ends now; the one it interrupted resumes. Without a running
    /// phase it does nothing.
    pub fn exit(&mut self) {
        let Some(top) = self.stack.pop() else { return };
        let now = self.now_ns();
        self.charge(top, now);
        if let Some(parent) = self.stack.last_mut() {
            parent.resumed_ns = now;
        }
    }

    /// A training step starts (before its batch is fetched). Phases left open by an exception
    /// are closed first.
    pub fn begin_step(&mut self) {
        self.close_open_phases();
        self.step_start_ns = Some(self.now_ns());
    }

    /// The running step ends; its time is added to the step total.
    pub fn end_step(&mut self) {
        self.close_open_phases();
        if let Some(start) = self.step_start_ns.take() {
            self.steps += 1;
            self.step_ns += self.now_ns().saturating_sub(start);
            self.fold_pending(true);
        }
    }

    /// A step that did not happen (the loader ran out during the fetch): drop it; what its
    /// phases recorded counts as time outside steps.
    pub fn cancel_step(&mut self) {
        self.close_open_phases();
        if self.step_start_ns.take().is_some() {
            self.fold_pending(false);
        }
    }

    fn close_open_phases(&mut self) {
        while !self.stack.is_empty() {
            self.exit();
        }
    }

    pub fn phases(&self) -> &[PhaseStats] {
        &self.phases
    }

    pub fn steps(&self) -> u64 {
        self.steps
    }

    pub fn step_ns(&self) -> u64 {
        self.step_ns
    }

    /// Step time not spent in any recorded phase: the loop's own cost.
    pub fn overhead_ns(&self) -> u64 {
        self.step_ns.saturating_sub(self.phases_in_steps_ns)
    }

    /// Forget all sums (phases stay registered).
    pub fn reset(&mut self) {
        for p in &mut self.phases {
            p.calls = 0;
            p.in_step_ns = 0;
            p.outside_ns = 0;
        }
        self.pending.iter_mut().for_each(|ns| *ns = 0);
        self.stack.clear();
        self.step_start_ns = None;
        self.steps = 0;
        self.step_ns = 0;
        self.phases_in_steps_ns = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread::sleep;
    use std::time::Duration;

    #[test]
    fn nested_phases_count_exclusive_time() {
        let mut t = PhaseTimer::new();
        let outer = t.phase("optimizer_step");
        let inner = t.phase("training_step");
        assert_eq!(t.phase("optimizer_step"), outer, "registering twice gives the same index");
        t.begin_step();
        t.enter(outer);
        sleep(Duration::from_millis(5));
        t.enter(inner);
        sleep(Duration::from_millis(20));
        t.exit();
        sleep(Duration::from_millis(5));
        t.exit();
        t.end_step();
        let p = t.phases();
        assert!(p[inner].in_step_ns >= 20_000_000);
        assert!(p[outer].in_step_ns >= 10_000_000);
        assert!(p[outer].in_step_ns < 20_000_000, "the inner phase is not counted in the outer one");
        assert_eq!(t.steps(), 1);
        assert_eq!(t.step_ns(), p[outer].in_step_ns + p[inner].in_step_ns + t.overhead_ns());
    }

    #[test]
    fn phases_outside_steps_are_kept_apart() {
        let mut t = PhaseTimer::new();
        let hook = t.phase("on_train_epoch_end");
        t.enter(hook);
        sleep(Duration::from_millis(2));
        t.exit();
        assert_eq!(t.phases()[hook].in_step_ns, 0);
        assert!(t.phases()[hook].outside_ns >= 2_000_000);
        assert_eq!(t.steps(), 0);
        assert_eq!(t.overhead_ns(), 0);
    }

    #[test]
    fn unbalanced_stamps_never_panic() {
        let mut t = PhaseTimer::new();
        t.exit();
        t.enter(42);
        t.end_step();
        let a = t.phase("a");
        t.begin_step();
        t.enter(a);
        t.enter(a);
        // An exception unwound both frames: the step still ends cleanly.
        t.end_step();
        assert_eq!(t.phases()[a].calls, 2);
        assert_eq!(t.steps(), 1);
        assert!(t.overhead_ns() <= t.step_ns());
        let before = t.phases()[a].in_step_ns;
        t.begin_step();
        t.enter(a);
        t.cancel_step();
        assert_eq!(t.steps(), 1);
        assert_eq!(t.phases()[a].in_step_ns, before, "a cancelled step adds nothing to step sums");
        t.reset();
        assert_eq!((t.steps(), t.step_ns(), t.phases()[a].calls), (0, 0, 0));
    }
}
