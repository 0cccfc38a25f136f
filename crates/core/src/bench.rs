//! Core benchmark (filled in below).
