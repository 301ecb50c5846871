//! Integration tests of the `sluice` CLI: the real binary over the repository's files
//! and against a real gateway on a socket.

mod admin;
mod config_check;
mod quotas;
