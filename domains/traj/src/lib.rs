//! blockdiff-traj: domain crate (work in progress; see the issue tracker).
