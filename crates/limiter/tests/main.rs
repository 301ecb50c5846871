//! Integration tests of the limiter: one conformance suite for both backends, property
//! tests against a reference model, and concurrency and failure tests on real Redis
//! (standalone, Cluster and Sentinel).

#![allow(unreachable_pub)]

mod accounts;
mod carried;
mod cluster;
mod concurrency;
mod conformance;
mod extremes;
mod failures;
mod fair_properties;
mod fairness;
mod marks;
mod properties;
mod security;
mod sentinel;
mod support;
