use std::cell::{Cell, RefCell};

use super::*;
use crate::schedule::ScheduleConfig;

fn schedule(cfg: ScheduleConfig, len: Option<u64>) -> RefCell<Schedule> {
    let mut s = Schedule::new(cfg).unwrap();
    s.set_num_training_batches(len).unwrap();
    s.begin_epoch(len).unwrap();
    RefCell::new(s)
}

/// Counts each stamp, to check that every begun step is ended or cancelled.
#[derive(Default)]
struct Counted {
    begun: Cell<u32>,
    ended: Cell<u32>,
    cancelled: Cell<u32>,
    waits: Cell<u32>,
}

impl Stamps for Counted {
    fn begin_step(&self) {
        self.begun.set(self.begun.get() + 1);
    }
    fn enter_data_wait(&self) {
        self.waits.set(self.waits.get() + 1);
    }
    fn exit(&self) {}
    fn end_step(&self) {
        self.ended.set(self.ended.get() + 1);
    }
    fn cancel_step(&self) {
        self.cancelled.set(self.cancelled.get() + 1);
    }
}

/// A loader of `n` batches (their indices), reporting the last one as an iterable would.
fn loader(n: u64) -> impl FnMut() -> Result<Option<(u64, bool)>, String> {
    let mut next = 0;
    move || {
        if next == n {
            return Ok(None);
        }
        next += 1;
        Ok(Some((next - 1, next == n)))
    }
}

#[test]
fn a_sized_epoch_runs_every_batch_and_calls_after_batch_only_when_needed() {
    let cfg = ScheduleConfig { log_every_n_steps: 2, accumulate_grad_batches: 2, ..ScheduleConfig::default() };
    let s = schedule(cfg, Some(5));
    let mut seen = Vec::new();
    let mut after = Vec::new();
    let hooks = EpochHooks {
        fetch: loader(5),
        train_batch: |b: u64, plan: &BatchPlan| {
            seen.push((b, plan.batch_idx, plan.zero_grad, plan.step_optimizer, plan.is_last));
            Ok(true)
        },
        after_batch: |a: AfterBatch| {
            after.push(a);
            Ok(())
        },
        after_every_batch: false,
    };
    let stamps = Counted::default();
    assert_eq!(run_epoch(&s, hooks, &stamps), Ok(5));
    assert_eq!(
        seen,
        vec![
            (0, 0, true, false, false),
            (1, 1, false, true, false),
            (2, 2, true, false, false),
            (3, 3, false, true, false),
            (4, 4, true, true, true),
        ]
    );
    // Three stepping batches; the second (log step 1) is the 2nd of every 2.
    assert_eq!(after, vec![AfterBatch { log: true, log_step: 1, validate: false, stepped: true }]);
    assert_eq!((stamps.begun.get(), stamps.ended.get(), stamps.cancelled.get()), (5, 5, 0));
    let s = s.into_inner();
    assert_eq!(s.progress().global_step, 3);
    assert!(s.epoch_done() && s.is_last_batch());
}

#[test]
fn after_every_batch_calls_after_each_batch_with_its_stepping_flag() {
    let cfg = ScheduleConfig { log_every_n_steps: 0, accumulate_grad_batches: 2, ..ScheduleConfig::default() };
    let s = schedule(cfg, None);
    let mut stepped = Vec::new();
    let hooks = EpochHooks {
        fetch: loader(3),
        train_batch: |_: u64, _: &BatchPlan| Ok(true),
        after_batch: |a: AfterBatch| {
            stepped.push(a.stepped);
            Ok(())
        },
        after_every_batch: true,
    };
    assert_eq!(run_epoch(&s, hooks, &NoStamps), Ok(3));
    // The iterable's look-ahead marks batch 2 last, which closes its window.
    assert_eq!(stepped, vec![false, true, true]);
}

#[test]
fn an_aborted_batch_ends_the_epoch_and_counts_as_started() {
    let s = schedule(ScheduleConfig::default(), Some(5));
    let hooks = EpochHooks {
        fetch: loader(5),
        train_batch: |b: u64, _: &BatchPlan| Ok(b != 1),
        after_batch: |_: AfterBatch| Ok(()),
        after_every_batch: true,
    };
    let stamps = Counted::default();
    assert_eq!(run_epoch(&s, hooks, &stamps), Ok(2));
    let s = s.into_inner();
    assert_eq!((s.progress().batches_in_epoch, s.progress().global_step), (2, 1));
    assert!(s.is_last_batch() && s.epoch_done());
    assert_eq!((stamps.begun.get(), stamps.ended.get()), (2, 2));
}

#[test]
fn an_exhausted_loader_ends_the_epoch_and_cancels_the_waiting_step() {
    // The loader claims 4 batches but yields 2 (a sized loader whose len() was wrong).
    let s = schedule(ScheduleConfig::default(), Some(4));
    let hooks = EpochHooks {
        fetch: {
            let mut inner = loader(2);
            move || inner().map(|item| item.map(|(b, _)| (b, false)))
        },
        train_batch: |_: u64, _: &BatchPlan| Ok(true),
        after_batch: |_: AfterBatch| Ok(()),
        after_every_batch: false,
    };
    let stamps = Counted::default();
    assert_eq!(run_epoch(&s, hooks, &stamps), Ok(2));
    assert_eq!((stamps.begun.get(), stamps.ended.get(), stamps.cancelled.get()), (3, 2, 1));
    assert_eq!(s.borrow().progress().batches_in_epoch, 2);
}

#[test]
fn a_closure_error_ends_the_epoch_unchanged_and_cancels_the_step() {
    let s = schedule(ScheduleConfig::default(), Some(5));
    let hooks = EpochHooks {
        fetch: loader(5),
        train_batch: |b: u64, _: &BatchPlan| if b == 2 { Err(format!("boom at {b}")) } else { Ok(true) },
        after_batch: |_: AfterBatch| Ok(()),
        after_every_batch: false,
    };
    let stamps = Counted::default();
    assert_eq!(run_epoch(&s, hooks, &stamps), Err(EpochError::Hook("boom at 2".to_string())));
    assert_eq!((stamps.begun.get(), stamps.ended.get(), stamps.cancelled.get()), (3, 2, 1));

    let failing_fetch = EpochHooks {
        fetch: || Err::<Option<(u64, bool)>, _>("loader failed".to_string()),
        train_batch: |_: u64, _: &BatchPlan| Ok(true),
        after_batch: |_: AfterBatch| Ok(()),
        after_every_batch: false,
    };
    let s = schedule(ScheduleConfig::default(), Some(5));
    assert_eq!(run_epoch(&s, failing_fetch, &NoStamps), Err(EpochError::Hook("loader failed".to_string())));
}

#[test]
fn closures_change_the_schedule_while_a_batch_runs() {
    // A callback stops the fit in batch 1's `on_train_batch_end`; with manual optimization the
    // user's steps are counted from inside the batch.
    let cfg = ScheduleConfig { automatic_optimization: false, log_every_n_steps: 1, ..ScheduleConfig::default() };
    let s = schedule(cfg, Some(5));
    let hooks = EpochHooks {
        fetch: loader(5),
        train_batch: |b: u64, _: &BatchPlan| {
            s.with(|s| {
                s.count_optimizer_step();
                s.count_optimizer_step();
                s.set_should_stop(b == 1);
            });
            Ok(true)
        },
        after_batch: |a: AfterBatch| {
            assert!(a.stepped, "manual optimization: every batch counts as stepping");
            Ok(())
        },
        after_every_batch: false,
    };
    assert_eq!(run_epoch(&s, hooks, &NoStamps), Ok(2));
    assert_eq!(s.borrow().progress().global_step, 4);
}

#[test]
fn a_schedule_called_out_of_order_is_an_error_not_a_panic() {
    let s = RefCell::new(Schedule::new(ScheduleConfig::default()).unwrap()); // no begin_epoch
    let hooks = EpochHooks {
        fetch: loader(1),
        train_batch: |_: u64, _: &BatchPlan| Ok::<_, String>(true),
        after_batch: |_: AfterBatch| Ok(()),
        after_every_batch: false,
    };
    let err = run_epoch(&s, hooks, &NoStamps).unwrap_err();
    assert!(matches!(err, EpochError::Schedule(ScheduleError::OutOfOrder(_))), "{err}");
}
