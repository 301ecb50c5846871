//! Integration tests of `sluice-config`: one module per concern.

mod load;
mod passthrough;
mod security;
