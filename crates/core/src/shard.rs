//! Deterministic sharding of a generation job: shard `I` of `N` (`--shard I/N`) takes the
//! contiguous slice [`Shard::range`] of the requests and seeds every request by its global id
//! ([`crate::sample::request_seed`]), so the shards' outputs concatenated in shard order equal
//! a single-machine run byte for byte. Fan it out with a SLURM array
//! (`--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT`) or a Kubernetes indexed job
//! (`--shard $JOB_COMPLETION_INDEX/N`).

use std::ops::Range;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Shard `index` of `count` (0-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// This shard, `0..count`.
    pub index: usize,
    /// Number of shards, > 0.
    pub count: usize,
}

impl Shard {
    /// Checked constructor.
    pub fn new(index: usize, count: usize) -> Result<Self, String> {
        if count == 0 || index >= count {
            return Err(format!(
                "shard {index}/{count}: need 0 <= index < count (0-based)"
            ));
        }
        Ok(Self { index, count })
    }

    /// This shard's requests out of `total`: contiguous, sizes differing by at most one, the
    /// shards in order tiling `0..total`.
    pub fn range(&self, total: usize) -> Range<usize> {
        let at = |i: usize| (total as u128 * i as u128 / self.count as u128) as usize;
        at(self.index)..at(self.index + 1)
    }
}

impl FromStr for Shard {
    type Err = String;

    /// Parses `I/N`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("shard `{s}`: expected I/N, e.g. 0/4"))?;
        let parse = |x: &str| {
            x.trim()
                .parse::<usize>()
                .map_err(|e| format!("shard `{s}`: `{x}` is not a count: {e}"))
        };
        Shard::new(parse(i)?, parse(n)?)
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_tile_the_job() {
        for total in [0, 1, 7, 100, 1001] {
            for count in 1..9 {
                let mut next = 0;
                for index in 0..count {
                    let r = Shard::new(index, count).unwrap().range(total);
                    assert_eq!(r.start, next);
                    assert!(r.len() <= total / count + 1);
                    next = r.end;
                }
                assert_eq!(next, total);
            }
        }
    }

    #[test]
    fn parses_and_rejects() {
        assert_eq!("2/5".parse::<Shard>().unwrap(), Shard::new(2, 5).unwrap());
        for bad in ["5/5", "1/0", "a/2", "3", "-1/2"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }
}
