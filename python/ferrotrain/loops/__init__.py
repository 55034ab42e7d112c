"""The training, evaluation and predict loops: what runs, in hook order, once a run has started.

One file per loop, each read top to bottom in the order its hooks fire. `Trainer.fit` sets the run
up (data, optimizers, checkpoint restore, the native `Schedule`) and hands over to `FitLoop.run`;
the batch loop itself is the native core's, which calls back into Python for each batch's work.

    Trainer.fit                                  trainer/trainer.py   Trainer._fit_impl
      on_fit_start, restore, sanity check        trainer/trainer.py   Trainer._run_sanity_check
                                                   -> evaluation.py   run_evaluation
      FitLoop(trainer).run()                     fit.py               FitLoop.run
        on_train_start
        per epoch:                               fit.py               FitLoop._run_epoch
          on_train_epoch_start
          fetcher = TrainFetcher(loader)         fetch.py             TrainFetcher (main thread, or the
                                                                      native `data.Prefetcher` thread)
          NATIVE: _core.run_train_epoch(schedule, fetcher, train_batch, after_batch)
                  per batch: fetcher.fetch(); the schedule decides step / zero_grad / last / log /
                  validate (one flags word); calls back:
            train_batch(batch, idx, flags)       fit.py               FitLoop._build_train_batch
              transfer to device, on_train_batch_start
              step.run(batch, idx, flags)        train_batch.py       AutomaticStep.run / ManualStep.run
                training_step, on_before_zero_grad, optimizer_zero_grad, on_before_backward,
                backward, on_after_backward, on_before_optimizer_step, clipping, optimizer_step
              step/epoch LR schedulers, on_train_batch_end
            after_batch(log, step, validate)     fit.py               FitLoop._after_batch
              log step metrics; validation       evaluation.py        run_evaluation
          on_train_epoch_end, plateau schedulers, epoch metrics       FitLoop._end_epoch
        on_train_end
    Trainer.validate / test                      evaluation.py        run_evaluation
    Trainer.predict                              predict.py           run_predict (and the loop's
                                                                      state, batch indices)

`step_signature` holds how a step's `batch_idx`/`dataloader_idx` arguments are read, shared by the
training and evaluation steps. The schedule's rules (when to step, log, validate, stop) live in the
pure Rust crate (`ferrotrain_core::schedule`, `ferrotrain_core::epoch`), tested there.
"""
