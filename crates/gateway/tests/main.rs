//! Integration tests of `sluice-gateway`: one module per concern, against the real
//! `sluice-sim`, real `redis-server` processes and real gateway processes.

mod support;

mod e2e_fleet;
mod flow;
mod routes;
