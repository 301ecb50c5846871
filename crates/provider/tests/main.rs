//! Integration tests of `sluice-provider`: one module per concern.

mod classify;
mod never_panics;
