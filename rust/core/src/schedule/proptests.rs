//! Property tests: the schedule, driven by the epoch driver the way the Trainer drives it, makes the same decisions
//! as the reference model of Lightning 2.x's loops (`reference.rs`), and a fit interrupted at
//! any checkpoint position and resumed from `progress()` continues exactly as the uninterrupted
//! one.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;

use proptest::collection::{btree_set, vec};
use proptest::prelude::*;

use super::reference::{self, BatchRecord, Event, Scenario, Trace};
use super::*;
use crate::epoch::{run_epoch, AfterBatch, EpochError, EpochHooks, NoStamps};

/// Where the driver stopped to "save a checkpoint", and what the Trainer held then.
#[derive(Clone, Copy, Debug)]
struct Paused {
    progress: Progress,
    /// `trainer.should_stop` is Trainer state, not loop progress (Lightning does not save it
    /// either); the resumed driver sets it back.
    should_stop: bool,
}

/// Why the epoch driver stopped early: the test "saves a checkpoint", or the schedule refused a
/// call.
enum Stop {
    Cut(Paused),
    Schedule(ScheduleError),
}

/// Drive a fit the way the Trainer does (the epoch driver, `crate::epoch::run_epoch`, for the
/// batches), recording what it does. With `cut = Some(k)` it returns at the k-th checkpoint
/// position: after a batch that ran (`on_train_batch_end` / `on_validation_end`), in
/// `on_train_epoch_end` (after `end_epoch`), or between epochs (after `complete_epoch`).
fn drive(
    sc: &Scenario,
    cell: &RefCell<Schedule>,
    events: &mut Vec<Event>,
    cut: Option<usize>,
) -> Result<Option<Paused>, ScheduleError> {
    let positions = Cell::new(0usize);
    let at_cut = |s: &Schedule| {
        let hit = cut == Some(positions.get());
        positions.set(positions.get() + 1);
        hit.then(|| Paused { progress: s.progress(), should_stop: s.should_stop() })
    };
    let len = sc.len_known.then_some(sc.epoch_len);
    // `setup_data`: the loader's length is known before the first `fit_done` (Lightning's
    // `_FitLoop.skip`).
    cell.borrow_mut().set_num_training_batches(len)?;
    loop {
        {
            let s = cell.borrow();
            if s.fit_done() || s.progress().epoch >= sc.epoch_cap {
                break;
            }
        }
        // The epoch's full length: a resumed epoch continues counting at `batches_in_epoch`
        // while the (resumable) loader yields the batches that remain.
        cell.borrow_mut().begin_epoch(len)?;
        let exhausted = Cell::new(false);
        let pending: Cell<Option<BatchRecord>> = Cell::new(None);
        let batch_events = RefCell::new(Vec::new());
        let hooks = EpochHooks {
            fetch: || {
                let idx = cell.borrow().progress().batches_in_epoch;
                if idx >= sc.epoch_len {
                    exhausted.set(true);
                    return Ok(None);
                }
                // An iterable reports its last batch by look-ahead; a sized loader leaves it
                // to the schedule, which knows the length.
                Ok(Some((idx, !sc.len_known && idx + 1 == sc.epoch_len)))
            },
            train_batch: |_idx: u64, plan: &BatchPlan| {
                let mut s = cell.borrow_mut();
                let p = s.progress();
                let total = p.total_batches - 1;
                let mut rec = BatchRecord {
                    epoch: p.epoch,
                    batch_idx: plan.batch_idx,
                    aborted: false,
                    zero_grad: false,
                    step: false,
                    log: None,
                    validate: false,
                };
                if sc.abort_at.contains(&total) {
                    // `on_train_batch_start` returned -1: nothing of the plan runs.
                    rec.aborted = true;
                    batch_events.borrow_mut().push(Event::Batch(rec));
                    return Ok(false);
                }
                rec.zero_grad = plan.zero_grad;
                rec.step = plan.step_optimizer;
                if !s.config().automatic_optimization {
                    for _ in 0..sc.manual_steps_at(total) {
                        s.count_optimizer_step();
                    }
                }
                if sc.stop_on_batch_end.contains(&total) {
                    s.set_should_stop(true);
                }
                pending.set(Some(rec));
                Ok(true)
            },
            after_batch: |after: AfterBatch| {
                let mut s = cell.borrow_mut();
                let Some(mut rec) = pending.take() else {
                    return Err(Stop::Schedule(ScheduleError::OutOfOrder("after_batch without a batch")));
                };
                rec.log = after.log.then_some(after.log_step);
                rec.validate = after.validate;
                let total = s.progress().total_batches - 1;
                if after.validate && sc.stop_on_val_end.contains(&total) {
                    s.set_should_stop(true);
                }
                batch_events.borrow_mut().push(Event::Batch(rec));
                at_cut(&s).map_or(Ok(()), |p| Err(Stop::Cut(p)))
            },
            // Every batch that ran is a checkpoint position.
            after_every_batch: true,
        };
        let ran = run_epoch(cell, hooks, &NoStamps);
        events.extend(batch_events.take());
        match ran {
            Ok(_) => {}
            Err(EpochError::Hook(Stop::Cut(p))) => return Ok(Some(p)),
            Err(EpochError::Hook(Stop::Schedule(e)) | EpochError::Schedule(e)) => return Err(e),
        }
        let mut s = cell.borrow_mut();
        // The driver stopped: the loader ran out, or the schedule says the epoch is over (an
        // aborted batch included).
        assert!(exhausted.get() || s.epoch_done(), "the driver and epoch_done disagree");
        s.end_epoch()?;
        let epoch = s.progress().epoch;
        events.push(Event::EpochEnd { epoch });
        if sc.stop_on_epoch_end.contains(&epoch) {
            s.set_should_stop(true);
        }
        if let Some(p) = at_cut(&s) {
            return Ok(Some(p));
        }
        s.complete_epoch()?;
        if let Some(p) = at_cut(&s) {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

fn new_schedule(sc: &Scenario) -> RefCell<Schedule> {
    let mut s = Schedule::new(sc.cfg.clone()).expect("generated configs are valid");
    s.set_should_stop(sc.stop_at_start);
    RefCell::new(s)
}

/// A fresh schedule (a new process), restored from the progress a checkpoint saved.
fn restored(sc: &Scenario, paused: Paused) -> RefCell<Schedule> {
    let mut r = Schedule::new(sc.cfg.clone()).expect("valid");
    r.restore(paused.progress);
    r.set_should_stop(paused.should_stop);
    RefCell::new(r)
}

/// The schedule's whole fit, as a trace comparable with the reference's.
fn schedule_trace(sc: &Scenario) -> (Trace, Progress) {
    let s = new_schedule(sc);
    let mut events = Vec::new();
    let paused = drive(sc, &s, &mut events, None).expect("the driver calls in order");
    assert!(paused.is_none());
    let p = s.borrow().progress();
    (Trace { events, global_step: p.global_step, current_epoch: p.epoch }, p)
}

fn limit(max: u64) -> impl Strategy<Value = Option<u64>> {
    prop_oneof![1 => Just(None), 3 => (0..=max).prop_map(Some)]
}

fn small_set(max: u64, size: usize) -> impl Strategy<Value = BTreeSet<u64>> {
    prop_oneof![1 => Just(BTreeSet::new()), 2 => btree_set(0..max, 1..=size)]
}

fn scenario() -> impl Strategy<Value = Scenario> {
    let limits = (limit(5), limit(40), prop_oneof![2 => Just(0u64), 1 => 1..=4u64], 0..=30u64);
    let cadence = (
        1..=5u64,
        0..=7u64,
        prop_oneof![1 => Just(None), 3 => (1..=3u64).prop_map(Some)],
        prop_oneof![1 => Just(None), 2 => (1..=13u64).prop_map(Some)],
        any::<bool>(),
        prop_oneof![3 => Just(true), 1 => Just(false)],
    );
    let data = (0..=13u64, any::<bool>());
    let user = (
        prop_oneof![9 => Just(false), 1 => Just(true)],
        small_set(80, 4),
        small_set(80, 4),
        small_set(6, 2),
        small_set(80, 3),
        vec(0..=2u8, 1..8),
    );
    (limits, cadence, data, user).prop_map(
        |(
            (max_epochs, max_steps, min_epochs, min_steps),
            (acc, log_n, cven, vcb, has_validation, automatic),
            (epoch_len, len_known),
            (
                stop_at_start,
                stop_on_batch_end,
                stop_on_val_end,
                stop_on_epoch_end,
                abort_at,
                manual,
            ),
        )| Scenario {
            cfg: ScheduleConfig {
                max_epochs,
                max_steps,
                min_epochs,
                min_steps,
                // Lightning rejects accumulation with manual optimization.
                accumulate_grad_batches: if automatic { acc } else { 1 },
                log_every_n_steps: log_n,
                check_val_every_n_epoch: cven,
                val_check_batch: vcb,
                has_validation,
                automatic_optimization: automatic,
            },
            epoch_len,
            len_known,
            stop_at_start,
            stop_on_batch_end,
            stop_on_val_end,
            stop_on_epoch_end,
            abort_at,
            manual_steps: manual,
            epoch_cap: 6,
        },
    )
}

proptest! {
    #[test]
    fn schedule_matches_lightning_reference(sc in scenario()) {
        // Lightning refuses an int `val_check_interval` longer than the epoch during
        // `setup_data`; the Trainer checks that before the schedule runs.
        let Ok(expected) = reference::run(&sc) else { return Ok(()) };
        let (got, _) = schedule_trace(&sc);
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn resume_from_any_checkpoint_position_continues_the_same_fit(
        sc in scenario(),
        cut_frac in 0.0..1.0f64,
    ) {
        let (full, full_progress) = schedule_trace(&sc);
        // Count the checkpoint positions of the uninterrupted fit, then cut at one of them.
        let mut positions = 0usize;
        loop {
            let s = new_schedule(&sc);
            let mut ev = Vec::new();
            if drive(&sc, &s, &mut ev, Some(positions)).expect("in order").is_none() {
                break;
            }
            positions += 1;
        }
        if positions == 0 {
            return Ok(()); // the fit never starts (no batches, a limit of 0, an early stop)
        }
        let cut = ((positions as f64) * cut_frac) as usize;

        let first = new_schedule(&sc);
        let mut events = Vec::new();
        let paused = drive(&sc, &first, &mut events, Some(cut))
            .expect("in order")
            .expect("the cut position exists");

        // A fresh Schedule (a new process), restored from the checkpointed progress.
        let resumed = restored(&sc, paused);
        let rest = drive(&sc, &resumed, &mut events, None).expect("in order");
        prop_assert!(rest.is_none());
        let p = resumed.borrow().progress();
        prop_assert_eq!(&events, &full.events, "cut at position {} of {}", cut, positions);
        prop_assert_eq!(p, full_progress);
    }
}

// Each divergence the property tests found, pinned as a named case.

fn base(epoch_len: u64) -> Scenario {
    Scenario {
        cfg: ScheduleConfig {
            max_epochs: Some(2),
            log_every_n_steps: 1,
            ..ScheduleConfig::default()
        },
        epoch_len,
        len_known: true,
        stop_at_start: false,
        stop_on_batch_end: BTreeSet::new(),
        stop_on_val_end: BTreeSet::new(),
        stop_on_epoch_end: BTreeSet::new(),
        abort_at: BTreeSet::new(),
        manual_steps: vec![1],
        epoch_cap: 6,
    }
}

fn assert_matches_reference(sc: &Scenario) -> Trace {
    let expected = reference::run(sc).expect("valid setup");
    let (got, _) = schedule_trace(sc);
    assert_eq!(got, expected);
    got
}

fn batches(t: &Trace) -> Vec<BatchRecord> {
    t.events
        .iter()
        .filter_map(|e| match e {
            Event::Batch(b) => Some(*b),
            Event::EpochEnd { .. } => None,
        })
        .collect()
}

#[test]
fn log_every_n_steps_zero_disables_step_logging() {
    let mut sc = base(3);
    sc.cfg.log_every_n_steps = 0;
    sc.stop_on_batch_end.insert(4); // not even a stop request logs
    let t = assert_matches_reference(&sc);
    assert!(batches(&t).iter().all(|b| b.log.is_none()));
}

#[test]
fn manual_optimization_plan_never_zeroes_or_steps() {
    let mut sc = base(3);
    sc.cfg.automatic_optimization = false;
    sc.manual_steps = vec![2, 0, 1];
    let t = assert_matches_reference(&sc);
    assert!(batches(&t).iter().all(|b| !b.zero_grad && !b.step && b.log.is_some()));
    assert_eq!(t.global_step, 6);
}

#[test]
fn manual_optimization_rejects_accumulation() {
    let cfg = ScheduleConfig {
        automatic_optimization: false,
        accumulate_grad_batches: 2,
        ..ScheduleConfig::default()
    };
    let e = Schedule::new(cfg).expect_err("Lightning refuses this");
    assert!(e.to_string().contains("accumulate_grad_batches"));
}

#[test]
fn empty_sized_loader_skips_the_fit() {
    let mut sc = base(0);
    sc.cfg.max_epochs = None; // used to loop over empty epochs forever
    let t = assert_matches_reference(&sc);
    assert_eq!((t.events.len(), t.global_step, t.current_epoch), (0, 0, 0));
}

#[test]
fn aborted_batch_ends_the_epoch() {
    let mut sc = base(5);
    sc.abort_at.insert(1);
    let t = assert_matches_reference(&sc);
    let epoch0: Vec<_> = batches(&t).into_iter().filter(|b| b.epoch == 0).collect();
    assert_eq!(epoch0.len(), 2);
    assert!(epoch0[1].aborted);
}

/// Resume `sc` from the state saved at checkpoint position `cut`; return the whole trace and
/// the final progress, and the uninterrupted fit's.
fn resumed(sc: &Scenario, cut: usize) -> ((Vec<Event>, Progress), (Vec<Event>, Progress)) {
    let (full, full_progress) = schedule_trace(sc);
    let s = new_schedule(sc);
    let mut events = Vec::new();
    let paused = drive(sc, &s, &mut events, Some(cut)).expect("in order").expect("cut exists");
    let r = restored(sc, paused);
    assert!(drive(sc, &r, &mut events, None).expect("in order").is_none());
    let progress = r.borrow().progress();
    ((events, progress), (full.events, full_progress))
}

#[test]
fn checkpoint_from_on_train_epoch_end_resumes_at_the_next_epoch() {
    // Positions in epoch 0 of 3 batches: after each batch (0, 1, 2), then in
    // `on_train_epoch_end` (3).
    let sc = base(3);
    let s = new_schedule(&sc);
    let paused = drive(&sc, &s, &mut Vec::new(), Some(3)).expect("in order").expect("exists");
    assert_eq!((paused.progress.epoch, paused.progress.epochs_processed), (0, 1));
    let mut r = Schedule::new(sc.cfg.clone()).expect("valid");
    r.restore(paused.progress);
    assert_eq!((r.progress().epoch, r.progress().batches_in_epoch), (1, 0));
    assert!(!r.resuming_mid_epoch());
    let (got, want) = resumed(&sc, 3);
    assert_eq!(got, want);
}

#[test]
fn checkpoint_at_max_steps_mid_epoch_still_ends_that_epoch() {
    // max_steps is reached at batch 1 of 4; the uninterrupted fit then runs on_train_epoch_end
    // and counts the epoch, so the resumed one must too.
    let mut sc = base(4);
    sc.cfg.max_steps = Some(2);
    let s = new_schedule(&sc);
    let paused = drive(&sc, &s, &mut Vec::new(), Some(1)).expect("in order").expect("exists");
    let mut r = Schedule::new(sc.cfg.clone()).expect("valid");
    r.restore(paused.progress);
    assert!(r.resuming_mid_epoch() && !r.fit_done());
    let (got, want) = resumed(&sc, 1);
    assert_eq!(got, want);
    assert_eq!(want.1.epoch, 1);
}

#[test]
fn estimated_stepping_batches_follows_lightning() {
    let with = |max_epochs, max_steps| {
        let cfg = ScheduleConfig {
            max_epochs,
            max_steps,
            accumulate_grad_batches: 3,
            ..ScheduleConfig::default()
        };
        Schedule::new(cfg).expect("valid")
    };
    // `max_epochs=-1`: `max_steps`, or inf.
    assert_eq!(with(None, Some(7)).estimated_stepping_batches(Some(10)), Some(7));
    assert_eq!(with(None, None).estimated_stepping_batches(Some(10)), None);
    // An iterable: `max_steps`.
    assert_eq!(with(Some(2), Some(7)).estimated_stepping_batches(None), Some(7));
    // `max(max_epochs, 1)` epochs of `ceil(10 / 3)` steps, capped by `max_steps`.
    assert_eq!(with(Some(0), None).estimated_stepping_batches(Some(10)), Some(4));
    assert_eq!(with(Some(2), Some(5)).estimated_stepping_batches(Some(10)), Some(5));
}
