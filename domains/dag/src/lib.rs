//! blockdiff-dag: domain crate (work in progress; see the issue tracker).
