//! Integration tests of `sluice-sidecar`: a real Redis, the simulator in-process, three
//! gateways in-process (each its own `Gateway`: own limiter client, own publisher, own
//! listener), and sidecars as real processes of the `sluice-sidecar` binary.

mod support;

mod api;
mod learn;
mod metrics_doc;
mod outage;
mod recalibration;
mod reload;
mod takeover;
mod trust;
