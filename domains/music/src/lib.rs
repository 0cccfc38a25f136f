//! blockdiff-music: domain crate (work in progress; see the issue tracker).
