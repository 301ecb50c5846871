//! Integration tests of `sluice-gateway`: one module per concern, against the real
//! `sluice-sim`, a counting stub upstream, real `redis-server` processes and real
//! gateway processes.

mod stub;
mod support;

mod abandoned_waits;
mod accounts;
mod admin_api;
mod admin_listener;
mod bad_input;
mod bounded_cost;
mod e2e_fleet;
mod fair_share;
mod faults;
mod flow;
mod http_fuzz;
mod metrics_doc;
mod native_apis;
mod reload;
mod routes;
mod safe_defaults;
mod secrets;
mod slow_clients;
mod status_page;
mod tenant_limits;
mod traces;
mod upstream_text;
