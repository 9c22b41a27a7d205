"""audit.json's checks: time budgets (training wall clock + Hessians, measured and projected eval), failed checks
named in audit.json and the README, and `audit.strict`."""

import pytest

from pgolf.errors import PgolfError
from pgolf.submission import audit_checks, check_strict, compliance_table


def seed_outputs(train_s=590.0, hessian_s=4.7, eval_s=400.0, projected_s=450.0, resumes=()):
    return {
        "summary": {"train_seconds": train_s, "resumes": list(resumes), "compile_warmup_seconds": 80.0},
        "hessians": {"seconds": hessian_s},
        "size": {"total_bytes": 15_900_000, "cap_bytes": 16_000_000},
        "eval": {
            "ttt": {"val_loss": 2.4, "val_bpb": 1.06},
            "quantized": {"val_loss": 2.5, "val_bpb": 1.1},
            "seconds": {"eval_timer": eval_s},
            "projected_8gpu_seconds": projected_s,
            "world": 8,
            "device": "H100",
            "scored": 100,
            "targets": 100,
            "probes": {
                "score_first": {"passed": True, "max_abs_diff_before_update": 0.0, "tolerance": 1e-4},
                "tilt_causal": "off",
            },
        },
    }


DATA_AUDIT = {
    "overlap": {"val_docs": 0, "fraction": 0.0, "examples": []},
    "max_overlap_fraction": 0.001,
    "passed": True,
}


def test_a_run_within_every_budget_passes():
    audit = audit_checks({}, DATA_AUDIT, {42: seed_outputs()})
    assert audit["all_passed"] and audit["failed"] == []
    train = audit["checks"]["seed42"]["train_seconds_incl_hessians"]
    assert train["value"] == pytest.approx(594.7) and train["limit"] == 600.0 and train["status"] == "passed"
    assert train["train_loop_seconds"] == 590.0 and train["hessian_seconds"] == 4.7 and train["resumes"] == []
    check_strict(audit, True, "out")  # nothing failed: strict passes


def test_the_record_reserve_cannot_hold_its_hessian_pass_and_the_failure_is_named():
    """#1855's 0.5 s reserve after a 599.6 s loop with a ~4.7 s Hessian pass: 604.3 s > 600 s."""
    seeds = {
        42: seed_outputs(train_s=599.6),
        0: seed_outputs(projected_s=1e5, resumes=[{"step": 300, "from_world_size": 8, "world_size": 8}]),
    }
    audit = audit_checks({}, DATA_AUDIT, seeds)
    assert not audit["all_passed"]
    assert audit["failed"] == ["seed42.train_seconds_incl_hessians", "seed0.eval_seconds_projected_8gpu"]
    assert audit["checks"]["seed42"]["train_seconds_incl_hessians"]["status"] == "failed"
    assert audit["checks"]["seed0"]["eval_seconds"]["status"] == "passed"  # the measured timer alone passes
    assert audit["checks"]["seed0"]["train_seconds_incl_hessians"]["resumes"][0]["step"] == 300
    table = compliance_table(audit)
    assert "| seed42.train_seconds_incl_hessians | 604.3 | 600.0 | failed |" in table
    assert "| seed0.eval_seconds_projected_8gpu | 100,000.0 | 600.0 | failed |" in table
    assert "| seed42.tilt_causality_probe | off | | off |" in table
    assert "Failed checks: seed42.train_seconds_incl_hessians, seed0.eval_seconds_projected_8gpu" in table
    check_strict(audit, False, "out")  # the default builds the folder
    with pytest.raises(PgolfError, match="out/audit.json: check\\(s\\) failed: seed42.train_seconds_incl_hessians"):
        check_strict(audit, True, "out")


def test_a_train_val_leak_fails_the_overlap_check():
    leak = {**DATA_AUDIT, "overlap": {"val_docs": 9, "fraction": 0.01, "examples": []}, "passed": False}
    audit = audit_checks({}, leak, {1: seed_outputs()})
    assert audit["failed"] == ["train_val_overlap"] and audit["checks"]["train_val_overlap"]["status"] == "failed"


def test_with_ttt_off_the_quantized_eval_is_the_timed_phase():
    # #1512 has no TTT: evaluate writes ttt None and times the quantized eval alone (no eval_timer)
    out = seed_outputs()
    out["eval"].update(ttt=None, seconds={"quantized_eval": 700.0})
    out["eval"]["probes"]["score_first"] = "off (eval.ttt.enabled is false)"
    audit = audit_checks({}, DATA_AUDIT, {42: out})
    assert audit["checks"]["seed42"]["eval_seconds"]["value"] == 700.0 and audit["failed"] == ["seed42.eval_seconds"]
    assert audit["checks"]["seed42"]["score_first_probe"] == "off (eval.ttt.enabled is false)"
