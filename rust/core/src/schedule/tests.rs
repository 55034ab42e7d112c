use super::*;

fn cfg() -> ScheduleConfig {
    ScheduleConfig { max_epochs: Some(2), min_epochs: 0, ..ScheduleConfig::default() }
}

/// Run a whole fit and return (global_step, epochs, validations, logged steps).
fn run(mut s: Schedule, len: u64) -> (u64, u64, u64, Vec<u64>) {
    let (mut vals, mut logs) = (0, vec![]);
    while !s.fit_done() {
        s.begin_epoch(Some(len)).unwrap();
        while !s.epoch_done() {
            s.begin_batch(false).unwrap();
            let out = s.end_batch().unwrap();
            vals += u64::from(out.validate);
            if out.log {
                logs.push(out.log_step);
            }
            if out.epoch_done {
                break;
            }
        }
        s.end_epoch().unwrap();
        s.complete_epoch().unwrap();
    }
    let p = s.progress();
    (p.global_step, p.epoch, vals, logs)
}

#[test]
fn plain_epochs_step_every_batch() {
    let s = Schedule::new(ScheduleConfig { log_every_n_steps: 4, ..cfg() }).unwrap();
    let (steps, epochs, vals, logs) = run(s, 10);
    assert_eq!((steps, epochs, vals), (20, 2, 0));
    assert_eq!(logs, vec![3, 7, 11, 15, 19]);
}

#[test]
fn accumulation_steps_on_window_end_and_last_batch() {
    let mut s = Schedule::new(ScheduleConfig { accumulate_grad_batches: 4, ..cfg() }).unwrap();
    s.begin_epoch(Some(10)).unwrap();
    let mut stepped = vec![];
    let mut zeroed = vec![];
    while !s.epoch_done() {
        let p = s.begin_batch(false).unwrap();
        if p.step_optimizer {
            stepped.push(p.batch_idx);
        }
        if p.zero_grad {
            zeroed.push(p.batch_idx);
        }
        s.end_batch().unwrap();
    }
    assert_eq!(stepped, vec![3, 7, 9]);
    assert_eq!(zeroed, vec![0, 4, 8]);
    assert_eq!(s.progress().global_step, 3);
}

#[test]
fn max_steps_ends_mid_epoch() {
    let s = Schedule::new(ScheduleConfig { max_steps: Some(7), max_epochs: None, ..cfg() }).unwrap();
    let (steps, epochs, _, _) = run(s, 5);
    assert_eq!((steps, epochs), (7, 2));
}

#[test]
fn fractional_val_check_does_not_force_last_batch() {
    // val_check_interval=0.3 over 10 batches is every 3 batches: 3, 6, 9, not 10.
    let mut s = Schedule::new(ScheduleConfig {
        val_check_batch: Some(3),
        has_validation: true,
        ..cfg()
    })
    .unwrap();
    s.begin_epoch(Some(10)).unwrap();
    let mut at = vec![];
    while !s.epoch_done() {
        let p = s.begin_batch(false).unwrap();
        if s.end_batch().unwrap().validate {
            at.push(p.batch_idx + 1);
        }
    }
    assert_eq!(at, vec![3, 6, 9]);
}

#[test]
fn check_val_every_n_epoch_skips_epochs() {
    let s = Schedule::new(ScheduleConfig {
        max_epochs: Some(6),
        check_val_every_n_epoch: Some(3),
        has_validation: true,
        ..cfg()
    })
    .unwrap();
    let (_, _, vals, _) = run(s, 4);
    assert_eq!(vals, 2);
}

#[test]
fn should_stop_waits_for_min_epochs() {
    let mut s = Schedule::new(ScheduleConfig { max_epochs: Some(10), min_epochs: 3, ..cfg() }).unwrap();
    s.set_should_stop(true);
    assert!(!s.fit_done());
    let (_, epochs, _, _) = run(s, 2);
    assert_eq!(epochs, 3);
}

#[test]
fn should_stop_mid_epoch_stops_at_once_without_minimums() {
    let mut s = Schedule::new(cfg()).unwrap();
    s.begin_epoch(Some(10)).unwrap();
    s.begin_batch(false).unwrap();
    s.set_should_stop(true);
    let out = s.end_batch().unwrap();
    assert!(out.epoch_done && out.log);
    s.end_epoch().unwrap();
    s.complete_epoch().unwrap();
    assert!(s.fit_done());
    assert_eq!(s.progress().global_step, 1);
}

#[test]
fn stop_at_step_ends_the_fit_at_a_closed_window_whatever_the_minimums() {
    let mut s = Schedule::new(ScheduleConfig {
        max_epochs: Some(10),
        min_epochs: 5,
        accumulate_grad_batches: 2,
        ..cfg()
    })
    .unwrap();
    s.begin_epoch(Some(10)).unwrap();
    s.set_stop_at_step(Some(0)); // requested before the first optimizer step
    assert!(s.epoch_done()); // between batches with no window open: it stops at once
    s.set_stop_at_step(None);
    s.begin_batch(false).unwrap();
    s.set_stop_at_step(Some(0));
    let out = s.end_batch().unwrap();
    assert!(!out.epoch_done, "an open accumulation window is finished first");
    s.begin_batch(false).unwrap();
    let out = s.end_batch().unwrap();
    assert!(out.epoch_done && s.stop_step_reached());
    assert_eq!(s.progress().global_step, 1);
    s.end_epoch().unwrap();
    s.complete_epoch().unwrap();
    assert!(s.fit_done(), "min_epochs does not hold a requested stop back");
}

#[test]
fn out_of_order_calls_are_errors() {
    let mut s = Schedule::new(cfg()).unwrap();
    assert!(s.begin_batch(false).is_err());
    assert!(s.end_batch().is_err());
    assert!(s.complete_epoch().is_err());
}

#[test]
fn invalid_settings_name_the_parameter() {
    let e = Schedule::new(ScheduleConfig { accumulate_grad_batches: 0, ..cfg() }).unwrap_err();
    assert!(e.to_string().contains("accumulate_grad_batches"));
}

#[test]
fn estimated_stepping_batches() {
    let s = Schedule::new(ScheduleConfig { accumulate_grad_batches: 3, ..cfg() }).unwrap();
    assert_eq!(s.estimated_stepping_batches(Some(10)), Some(8));
    assert_eq!(s.estimated_stepping_batches(None), None);
}

#[test]
fn automatic_step_reported_early_is_counted_once() {
    let mut s = Schedule::new(cfg()).unwrap();
    s.begin_epoch(Some(4)).unwrap();
    s.begin_batch(false).unwrap();
    s.count_optimizer_step();
    assert_eq!(s.progress().global_step, 1, "visible before end_batch, as in on_train_batch_end");
    s.count_optimizer_step();
    s.end_batch().unwrap();
    assert_eq!(s.progress().global_step, 1);
    s.begin_batch(false).unwrap();
    s.end_batch().unwrap();
    assert_eq!(s.progress().global_step, 2, "an unreported step is still counted");
}

#[test]
fn checkpoint_inside_a_batch_stores_the_batch_as_done() {
    let mut s = Schedule::new(cfg()).unwrap();
    s.begin_epoch(Some(4)).unwrap();
    s.begin_batch(false).unwrap();
    let inside = s.checkpoint_progress();
    s.end_batch().unwrap();
    assert_eq!(inside, s.progress());
}

#[test]
fn accumulation_factor_changes_between_epochs() {
    let mut s = Schedule::new(cfg()).unwrap();
    s.set_num_training_batches(Some(4)).unwrap();
    let steps_in_epoch = |s: &mut Schedule| {
        s.begin_epoch(Some(4)).unwrap();
        let mut steps = Vec::new();
        while !s.epoch_done() {
            steps.push(s.begin_batch(false).unwrap().step_optimizer);
            s.end_batch().unwrap();
        }
        s.end_epoch().unwrap();
        s.complete_epoch().unwrap();
        steps
    };
    assert_eq!(steps_in_epoch(&mut s), vec![true, true, true, true]);
    s.set_accumulate_grad_batches(2).unwrap();
    assert_eq!(steps_in_epoch(&mut s), vec![false, true, false, true]);
    assert_eq!(s.progress().global_step, 6);
    assert!(s.set_accumulate_grad_batches(0).is_err());
}

#[test]
fn manual_optimization_rejects_an_accumulation_factor() {
    let mut s = Schedule::new(ScheduleConfig { automatic_optimization: false, ..cfg() }).unwrap();
    assert!(s.set_accumulate_grad_batches(1).is_ok());
    assert!(s.set_accumulate_grad_batches(2).is_err());
}
