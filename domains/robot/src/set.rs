//! Task-routed policy sets: several policies behind one node, each answering the tasks it was
//! trained on.
//!
//! A small multi-task model shares its capacity across every task, and on MetaWorld MT10 the
//! tasks with free goal positions are the ones that lose (README, robot results). A set trains
//! one policy per task ([`train_per_task`]) and routes each request by its task name, so every
//! task gets a whole model at the same per-call cost. The node speaks the same protocol either
//! way: a client cannot tell a set from one policy.
//!
//! On disk a set is a directory with `policy_set.json` (format, member directories relative to
//! it) and one ordinary checkpoint directory per member.

use std::path::{Path, PathBuf};

use blockdiff_core::checkpoint;
use blockdiff_core::sample::{SampleStats, SamplerConfig};
use serde::{Deserialize, Serialize};

use crate::chunk::ActionChunk;
use crate::data::Demos;
use crate::error::RobotError;
use crate::policy::{train, Observation, PolicyConfig, RobotPolicy, RobotSettings};

/// Manifest file name of a set directory.
pub const SET_FILE: &str = "policy_set.json";
/// Manifest format tag.
pub const SET_FORMAT: &str = "blockdiff-robot-policy-set/1";

/// `policy_set.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SetManifest {
    /// [`SET_FORMAT`].
    pub format: String,
    /// Member checkpoint directories, relative to the set directory.
    pub members: Vec<String>,
}

/// One or more policies; a request goes to the member that knows its task.
pub struct PolicySet {
    members: Vec<RobotPolicy>,
    /// Per task of [`Self::settings`]: (member, the task's index in that member).
    route: Vec<(usize, usize)>,
    /// The first member's settings with the union of the tasks: what the wire format and the
    /// metadata frame need (dimensions, history, horizon, task names).
    settings: RobotSettings,
}

impl From<RobotPolicy> for PolicySet {
    fn from(p: RobotPolicy) -> Self {
        let settings = p.settings().clone();
        Self {
            route: (0..settings.tasks.len()).map(|t| (0, t)).collect(),
            members: vec![p],
            settings,
        }
    }
}

impl PolicySet {
    /// A set of `members`. They must agree on the observation width, history, horizon and
    /// action width, and no task may belong to two members.
    pub fn new(members: Vec<RobotPolicy>) -> Result<Self, RobotError> {
        let first = members
            .first()
            .ok_or_else(|| RobotError::Config("a policy set needs at least one member".into()))?
            .settings()
            .clone();
        let shape = |s: &RobotSettings| (s.obs_dim, s.config.history, s.config.horizon, s.act_dim);
        let mut settings = first.clone();
        settings.tasks.clear();
        let mut route = Vec::new();
        for (m, p) in members.iter().enumerate() {
            let s = p.settings();
            if shape(s) != shape(&first) {
                return Err(RobotError::Config(format!(
                    "policy set member {m} has (obs_dim, history, horizon, act_dim) {:?}, member 0 {:?}",
                    shape(s),
                    shape(&first)
                )));
            }
            for (i, task) in s.tasks.iter().enumerate() {
                if settings.tasks.contains(task) {
                    return Err(RobotError::Config(format!(
                        "task {task:?} belongs to two members of the policy set (member {m} and an earlier one)"
                    )));
                }
                settings.tasks.push(task.clone());
                route.push((m, i));
            }
        }
        Ok(Self {
            members,
            route,
            settings,
        })
    }

    /// Loads a set directory (with [`SET_FILE`]) or a single checkpoint directory.
    pub fn load(dir: &Path) -> Result<Self, RobotError> {
        let manifest_path = dir.join(SET_FILE);
        if !manifest_path.exists() {
            return Ok(RobotPolicy::load(dir)?.into());
        }
        let manifest: SetManifest = checkpoint::read_json(&manifest_path)?;
        if manifest.format != SET_FORMAT {
            return Err(RobotError::Config(format!(
                "{}: format {:?}, expected {SET_FORMAT:?}",
                manifest_path.display(),
                manifest.format
            )));
        }
        let members = manifest
            .members
            .iter()
            .map(|m| {
                member_dir(dir, m)
                    .and_then(|d| RobotPolicy::load(&d))
                    .map_err(|e| {
                        RobotError::Config(format!(
                            "{}: member {m:?}: {e}",
                            manifest_path.display()
                        ))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(members)
    }

    /// The merged settings: dimensions of every member, the tasks of all of them.
    pub fn settings(&self) -> &RobotSettings {
        &self.settings
    }

    /// The members, in manifest order.
    pub fn members(&self) -> &[RobotPolicy] {
        &self.members
    }

    /// [`RobotPolicy::with_decoding`] on every member.
    pub fn with_decoding(
        self,
        samples: Option<usize>,
        temperature: Option<f32>,
    ) -> Result<Self, RobotError> {
        let members = self
            .members
            .into_iter()
            .map(|p| p.with_decoding(samples, temperature))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { members, ..self })
    }

    /// Each member's serving sampler ([`RobotPolicy::sampler`]).
    pub fn samplers(&self, block: Option<usize>, per_step: Option<usize>) -> Vec<SamplerConfig> {
        self.members
            .iter()
            .map(|p| p.sampler(block, per_step))
            .collect()
    }

    /// Action chunks for a batch of observations (task indices of [`Self::settings`]): each
    /// member decodes the observations of its tasks as one batch; the chunks come back in
    /// request order and the counters are summed over the members' calls.
    pub fn act(
        &self,
        obs: &[Observation],
        samplers: &[SamplerConfig],
    ) -> Result<(Vec<ActionChunk>, SampleStats), RobotError> {
        if samplers.len() != self.members.len() {
            return Err(RobotError::Config(format!(
                "{} samplers for {} policy set members",
                samplers.len(),
                self.members.len()
            )));
        }
        // One pass: each request's member and its task index there, grouped per member.
        let mut groups: Vec<(Vec<usize>, Vec<Observation>)> =
            vec![(Vec::new(), Vec::new()); self.members.len()];
        for (i, o) in obs.iter().enumerate() {
            let &(member, task) = self.route.get(o.task).ok_or_else(|| {
                RobotError::Observation(format!(
                    "task {} outside the {} tasks the policy set knows",
                    o.task,
                    self.route.len()
                ))
            })?;
            groups[member].0.push(i);
            groups[member].1.push(Observation {
                state: o.state.clone(),
                task,
            });
        }
        let mut out: Vec<Option<ActionChunk>> = vec![None; obs.len()];
        let mut stats = SampleStats::default();
        for (m, (index, local)) in groups.into_iter().enumerate() {
            if local.is_empty() {
                continue;
            }
            let (chunks, s) = self.members[m].act(&local, &samplers[m])?;
            for (i, c) in index.into_iter().zip(chunks) {
                out[i] = Some(c);
            }
            stats += s;
        }
        // Every observation's task has an owner (checked above), so every slot is filled.
        Ok((out.into_iter().flatten().collect(), stats))
    }
}

/// A member directory: relative, inside the set directory (no `..`, no absolute paths), so a
/// set can be moved and cannot point elsewhere.
fn member_dir(dir: &Path, member: &str) -> Result<PathBuf, RobotError> {
    let rel = Path::new(member);
    let plain = rel
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    if member.is_empty() || !plain {
        return Err(RobotError::Config(format!(
            "member directory {member:?} must be a relative path inside the set"
        )));
    }
    Ok(dir.join(rel))
}

/// A task name as a directory name: ASCII letters, digits, `-`, `_` and `.` kept, anything
/// else `_`.
fn dir_name(task: &str) -> String {
    let s: String = task
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.chars().all(|c| c == '.') {
        format!("task_{s}")
    } else {
        s
    }
}

/// Trains one policy per task of `demos` (tasks without a successful episode are skipped) into
/// `dir/<task>/` and writes the set manifest last, so an interrupted run leaves no set that
/// looks complete. Returns the set and each member's training report.
pub fn train_per_task(
    demos: &Demos,
    cfg: &PolicyConfig,
    dir: &Path,
    progress: bool,
) -> Result<(PolicySet, Vec<(String, blockdiff_core::train::TrainReport)>), RobotError> {
    let mut members = Vec::new();
    let mut names: Vec<String> = Vec::new();
    let mut reports = Vec::new();
    for (t, task) in demos.tasks.iter().enumerate() {
        let one = demos.only_task(t)?;
        if one.successful().next().is_none() {
            tracing::warn!("task {task}: no successful demonstration, left out of the set");
            continue;
        }
        let mut name = dir_name(task);
        while names.contains(&name) {
            name.push('_');
        }
        tracing::info!("policy set: training {task} -> {name}");
        let (policy, report) = train(&one, cfg, Some(&dir.join(&name)), progress)?;
        members.push(policy);
        names.push(name);
        reports.push((task.clone(), report));
    }
    let set = PolicySet::new(members)?;
    checkpoint::write_json(
        &dir.join(SET_FILE),
        &SetManifest {
            format: SET_FORMAT.into(),
            members: names,
        },
    )?;
    Ok((set, reports))
}
