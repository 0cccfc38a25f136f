//! The PyTorch twin (`tests/torch_twin/twin.py`) loads our `model.safetensors` and reproduces
//! our logits within 1e-4 on the training and inference layouts (condition vectors and token
//! features included). Needs a Python with torch: `BLOCKDIFF_TWIN_PYTHON` (CI sets it via
//! `tests/torch_twin/setup.sh`); without it the test looks for the setup script's virtualenv
//! and is skipped with a message only when there is none.

use std::path::PathBuf;

use blockdiff_core::twin::{default_python, run_twin, write_case, TwinSpec};

#[test]
fn torch_twin_reproduces_our_logits() {
    let Some(python) = default_python() else {
        eprintln!(
            "SKIPPED torch_twin_reproduces_our_logits: no PyTorch (run tests/torch_twin/setup.sh \
             or set BLOCKDIFF_TWIN_PYTHON)"
        );
        return;
    };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/torch_twin/twin.py");
    let dir = std::env::temp_dir().join(format!("blockdiff-twin-test-{}", std::process::id()));
    let spec = TwinSpec::small();
    let case = write_case(&dir, &spec).expect("case written");
    assert_eq!(case.checks.len(), 2);
    let side = run_twin(&python, &script, &dir, true, "cpu").expect("twin ran");
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("twin (torch {}): {:?}", side.torch, side.checks);
    for (name, diff) in &side.checks {
        assert!(*diff <= 1e-4, "{name}: max |Δ logit| {diff:e} > 1e-4");
    }
    assert!(side.max_abs_logit_diff.is_finite());
    // The logits are not trivially equal (e.g. all zero): they vary across the vocabulary.
    let l = &case.checks[0].logits;
    let spread =
        l.iter().cloned().fold(f32::MIN, f32::max) - l.iter().cloned().fold(f32::MAX, f32::min);
    assert!(spread > 1.0, "logit spread {spread}");
}

/// The GPU check's machinery, on the CPU: the case's model reloaded from disk and run on the
/// case's own inputs (mask rebuilt from the case file) gives back exactly the logits the case
/// holds, and a changed logit is seen.
#[test]
fn case_logits_recompute_exactly_from_the_case_file() {
    use blockdiff_core::twin::backend_logit_diff;
    use blockdiff_core::CpuBackend;
    let dir = std::env::temp_dir().join(format!("blockdiff-twin-recompute-{}", std::process::id()));
    let mut case = write_case(&dir, &TwinSpec::small()).expect("case written");
    let device = Default::default();
    let same = backend_logit_diff::<CpuBackend>(&dir, &case, &device).expect("recomputed");
    assert_eq!(
        same, 0.0,
        "reloaded model, same backend: logits must be identical"
    );
    case.checks[1].logits[7] += 0.25;
    let off = backend_logit_diff::<CpuBackend>(&dir, &case, &device).expect("recomputed");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        (off - 0.25).abs() < 1e-6,
        "a logit moved by 0.25 shows as {off}"
    );
}

/// A damaged case file is a typed error naming the check, not a panic in the model.
#[test]
fn a_damaged_case_is_a_typed_error() {
    use blockdiff_core::twin::backend_logit_diff;
    use blockdiff_core::CpuBackend;
    let dir = std::env::temp_dir().join(format!("blockdiff-twin-damaged-{}", std::process::id()));
    let case = write_case(&dir, &TwinSpec::small()).expect("case written");
    let device = Default::default();
    let damage: [(&str, fn(&mut blockdiff_core::twin::TwinCase)); 5] = [
        ("ragged tokens", |c| {
            c.checks[0].tokens[1].pop();
        }),
        ("token id", |c| c.checks[0].tokens[0][0] = 1 << 20),
        ("mask", |c| {
            c.checks[1].mask.pop();
        }),
        ("condition", |c| {
            c.checks[0].cond.as_mut().unwrap()[0].push(0.0);
        }),
        ("logits", |c| {
            c.checks[1].logits.pop();
        }),
    ];
    for (what, f) in damage {
        let mut bad = case.clone();
        f(&mut bad);
        let err = backend_logit_diff::<CpuBackend>(&dir, &bad, &device)
            .expect_err(what)
            .to_string();
        assert!(err.contains("check `"), "{what}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
