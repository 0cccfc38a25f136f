//! Commit policies and correctors as short strings (`threshold:0.9`, `s2d2:static:1:0.9`,
//! `arpc:2:1:0.3`), so every domain's CLI and benchmark names them the same way.
//! `Display` writes the form `FromStr` reads.

use std::fmt;
use std::str::FromStr;

use super::{CommitPolicy, Corrector, SpecRouting};
use crate::error::SampleError;

/// The accepted forms, for error messages and `--help`.
pub const POLICY_FORMS: &str =
    "threshold:TAU, topk:K, dynamic:TAU:K, first-hitting, dilated:PER_STEP, ordered:PER_STEP[:STRIPES], \
     s2d2 (= s2d2:always), s2d2:static:COST:TAU, s2d2:dynamic:COST:TAU, \
     s2d2:hysteresis:COST:ON:OFF:TAU, dcd:TAU:WINDOW:MAX_WINDOW, \
     uniform:STEPS[:CORRECTOR_K:ROUNDS]";

/// The accepted corrector form.
pub const CORRECTOR_FORMS: &str = "arpc:REMASK:ROUNDS:MAX_PROB";

fn field<T: FromStr>(s: &str, what: &str, whole: &str) -> Result<T, SampleError> {
    s.parse()
        .map_err(|_| SampleError::Config(format!("`{whole}`: {what} `{s}` is not a valid number")))
}

impl FromStr for CommitPolicy {
    type Err = SampleError;

    fn from_str(s: &str) -> Result<Self, SampleError> {
        let parts: Vec<&str> = s.trim().split(':').collect();
        let f = |i: usize, what: &str| -> Result<f32, SampleError> { field(parts[i], what, s) };
        let n = |i: usize, what: &str| -> Result<usize, SampleError> { field(parts[i], what, s) };
        let policy = match parts.as_slice() {
            ["threshold", _] => CommitPolicy::Threshold { tau: f(1, "TAU")? },
            ["topk", _] => CommitPolicy::TopK { k: n(1, "K")? },
            ["dynamic", _, _] => CommitPolicy::DynamicFallback {
                tau: f(1, "TAU")?,
                k: n(2, "K")?,
            },
            ["first-hitting"] => CommitPolicy::FirstHitting,
            ["dilated", _] => CommitPolicy::Dilated {
                per_step: n(1, "PER_STEP")?,
            },
            ["ordered", _] => CommitPolicy::Ordered {
                per_step: n(1, "PER_STEP")?,
                stripes: 0,
            },
            ["ordered", _, _] => CommitPolicy::Ordered {
                per_step: n(1, "PER_STEP")?,
                stripes: n(2, "STRIPES")?,
            },
            ["s2d2"] | ["s2d2", "always"] => CommitPolicy::Speculative {
                routing: SpecRouting::Always,
            },
            ["s2d2", mode @ ("static" | "dynamic"), _, _] => CommitPolicy::Speculative {
                routing: SpecRouting::Score {
                    cost: f(2, "COST")?,
                    dynamic: *mode == "dynamic",
                    tau: f(3, "TAU")?,
                },
            },
            ["s2d2", "hysteresis", _, _, _, _] => CommitPolicy::Speculative {
                routing: SpecRouting::Hysteresis {
                    cost: f(2, "COST")?,
                    on: f(3, "ON")?,
                    off: f(4, "OFF")?,
                    tau: f(5, "TAU")?,
                },
            },
            ["dcd", _, _, _] => CommitPolicy::Deferred {
                tau: f(1, "TAU")?,
                window: n(2, "WINDOW")?,
                max_window: n(3, "MAX_WINDOW")?,
            },
            ["uniform", _] => CommitPolicy::Uniform {
                steps: n(1, "STEPS")?,
                corrector_k: 1,
                corrector_rounds: 0,
            },
            ["uniform", _, _, _] => CommitPolicy::Uniform {
                steps: n(1, "STEPS")?,
                corrector_k: n(2, "CORRECTOR_K")?,
                corrector_rounds: n(3, "ROUNDS")?,
            },
            _ => {
                return Err(SampleError::Config(format!(
                    "unknown commit policy `{s}` (one of: {POLICY_FORMS})"
                )))
            }
        };
        Ok(policy)
    }
}

impl fmt::Display for CommitPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommitPolicy::Threshold { tau } => write!(f, "threshold:{tau}"),
            CommitPolicy::TopK { k } => write!(f, "topk:{k}"),
            CommitPolicy::DynamicFallback { tau, k } => write!(f, "dynamic:{tau}:{k}"),
            CommitPolicy::FirstHitting => write!(f, "first-hitting"),
            CommitPolicy::Dilated { per_step } => write!(f, "dilated:{per_step}"),
            CommitPolicy::Ordered { per_step, stripes } => {
                write!(f, "ordered:{per_step}:{stripes}")
            }
            CommitPolicy::Speculative {
                routing: SpecRouting::Always,
            } => write!(f, "s2d2:always"),
            CommitPolicy::Speculative {
                routing: SpecRouting::Score { cost, dynamic, tau },
            } => {
                let mode = if *dynamic { "dynamic" } else { "static" };
                write!(f, "s2d2:{mode}:{cost}:{tau}")
            }
            CommitPolicy::Speculative {
                routing: SpecRouting::Hysteresis { cost, on, off, tau },
            } => write!(f, "s2d2:hysteresis:{cost}:{on}:{off}:{tau}"),
            CommitPolicy::Deferred {
                tau,
                window,
                max_window,
            } => write!(f, "dcd:{tau}:{window}:{max_window}"),
            CommitPolicy::Uniform {
                steps,
                corrector_k,
                corrector_rounds,
            } => write!(f, "uniform:{steps}:{corrector_k}:{corrector_rounds}"),
        }
    }
}

impl FromStr for Corrector {
    type Err = SampleError;

    fn from_str(s: &str) -> Result<Self, SampleError> {
        match s.trim().split(':').collect::<Vec<_>>().as_slice() {
            ["arpc", r, n, p] => Ok(Corrector::Arpc {
                remask: field(r, "REMASK", s)?,
                rounds: field(n, "ROUNDS", s)?,
                max_prob: field(p, "MAX_PROB", s)?,
            }),
            _ => Err(SampleError::Config(format!(
                "unknown corrector `{s}` (expected {CORRECTOR_FORMS})"
            ))),
        }
    }
}

impl fmt::Display for Corrector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Corrector::Arpc {
                remask,
                rounds,
                max_prob,
            } => write!(f, "arpc:{remask}:{rounds}:{max_prob}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_policy_round_trips_through_its_text() {
        for s in [
            "threshold:0.9",
            "topk:2",
            "dynamic:0.8:2",
            "first-hitting",
            "s2d2:always",
            "s2d2:static:1:0.9",
            "s2d2:dynamic:0.5:0.7",
            "s2d2:hysteresis:1:0.5:-0.5:0.9",
            "dcd:0.9:8:16",
            "uniform:8:2:1",
        ] {
            let p: CommitPolicy = s.parse().unwrap();
            assert_eq!(p.to_string(), s);
        }
        assert_eq!(
            "s2d2".parse::<CommitPolicy>().unwrap(),
            CommitPolicy::Speculative {
                routing: SpecRouting::Always
            }
        );
        let c: Corrector = "arpc:2:1:0.3".parse().unwrap();
        assert_eq!(c.to_string(), "arpc:2:1:0.3");
    }

    #[test]
    fn bad_policy_text_names_the_field() {
        let e = "threshold:x"
            .parse::<CommitPolicy>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("TAU") && e.contains("`x`"), "{e}");
        let e = "s2d2:sometimes:1:1"
            .parse::<CommitPolicy>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown commit policy"), "{e}");
        let e = "arpc:1:2".parse::<Corrector>().unwrap_err().to_string();
        assert!(e.contains("arpc:REMASK"), "{e}");
    }
}
