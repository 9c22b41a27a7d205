"""Progressive context (`model.seq_schedule`, the #2014 lineage): the training sequence length by training
fraction, and the LR ramp after each change of length (`train.seq_change_warmup_steps`). Shipped only in scripts
whose config sets a schedule (pgolf.codepack.OPTIONAL); without one, pgolf.train runs model.train_seq_len.
"""


def seq_len_at(schedule: list, frac: float) -> int:
    """The first [seq_len, until_frac] of `schedule` with frac < until_frac (the last one from then on)."""
    for seq_len, until in schedule:
        if frac < until:
            return int(seq_len)
    return int(schedule[-1][0])


def scheduled_lens(schedule: list) -> list[int]:
    """The schedule's sequence lengths, each once, ascending."""
    return sorted({int(n) for n, _ in schedule})


def seq_change_ramp(step: int, changed_at: int | None, warmup_steps: int) -> float:
    """LR factor after a sequence-length change at step `changed_at`: 1/N, 2/N, ... 1 over the N = warmup_steps
    steps from it (SEQ_CHANGE_WARMUP_STEPS as the #2014 lineage applies it, on top of the schedule's multiplier)."""
    if warmup_steps <= 0 or changed_at is None:
        return 1.0
    return min((step - changed_at + 1) / warmup_steps, 1.0)


def advance(trainer, frac: float) -> tuple[int, float]:
    """One step of a pgolf.train.Trainer under the schedule: (its sequence length, the LR ramp factor), logging a
    change of length and remembering the step it happened at (checkpointed as `seq_changed_at`)."""
    seq_len = seq_len_at(trainer.model_cfg.seq_schedule, frac)
    if trainer.seq_len is not None and seq_len != trainer.seq_len:
        trainer.seq_changed_at = trainer.step
        trainer.emit({"event": "seq_len_changed", "step": trainer.step, "seq_len": seq_len})
    return seq_len, seq_change_ramp(trainer.step, trainer.seq_changed_at, trainer.cfg.seq_change_warmup_steps)
