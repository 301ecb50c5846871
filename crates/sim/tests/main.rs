//! Integration tests of sluice-sim over real sockets on port 0, one module per concern.

mod common;

mod bad_input;
mod binary;
mod dialects;
mod faults;
mod metering;
mod native_apis;
mod stats_admin;
mod streaming;
