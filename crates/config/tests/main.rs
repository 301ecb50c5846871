//! Integration tests of `sluice-config`: one module per concern.

mod accounts;
mod load;
mod passthrough;
mod security;
mod tenants;
