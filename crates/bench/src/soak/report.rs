//! The soak's report: what ran, the checks with their figures, and the figures behind
//! them, as JSON (`soak.json`) and as a human table.

use std::collections::BTreeMap;

use serde::Serialize;

use super::checks::{Check, KeyFindings, MemoryVerdict, SimView};
use super::faults::FaultEvent;
use super::plan::FaultKind;

/// What the soak found.
#[derive(Clone, Debug, Serialize)]
pub struct SoakReport {
    /// Every check passed.
    pub passed: bool,
    /// The checks, in order.
    pub checks: Vec<Check>,
    /// Seed.
    pub seed: u64,
    /// Seconds of traffic.
    pub duration_s: f64,
    /// Offered ÷ request limit.
    pub load: f64,
    /// What ran.
    pub setup: String,
    /// Requests sent.
    pub sent: u64,
    /// How they ended (status, or what went wrong).
    pub endings: BTreeMap<String, u64>,
    /// Gateway 429s without `Retry-After`.
    pub refusals_without_retry_after: u64,
    /// The simulator at the end.
    pub simulator: SimView,
    /// Rate-limit refusals by the simulator while a Redis fault (or its aftermath) lasted.
    pub upstream_429s_in_redis_faults: u64,
    /// … by the fault they followed (the latest whose influence overlaps).
    pub upstream_429s_by_fault: BTreeMap<FaultKind, u64>,
    /// … and outside.
    pub upstream_429s_elsewhere: u64,
    /// The memory rule per process slot.
    pub memory: Vec<MemoryVerdict>,
    /// Redis key checks.
    pub keys: KeyFindings,
    /// The faults, as they happened.
    pub faults: Vec<FaultEvent>,
}

impl SoakReport {
    /// The report as pretty JSON.
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// A human summary: the checks, then the figures.
    pub fn table(&self) -> String {
        let mut out = String::new();
        out += &format!(
            "soak: {:.0} s, seed {}, load {:.2}× the request limit, {} faults\n{}\n\n",
            self.duration_s,
            self.seed,
            self.load,
            self.faults.len(),
            self.setup
        );
        out += "| check | result | figures |\n|---|---|---|\n";
        for c in &self.checks {
            out += &format!(
                "| {} | {} | {} |\n",
                c.name,
                if c.passed { "pass" } else { "**FAIL**" },
                c.detail
            );
        }
        out += "\n| client ending | requests |\n|---|---:|\n";
        for (k, v) in &self.endings {
            out += &format!("| {k} | {v} |\n");
        }
        out += &format!(
            "\nsimulator: accepted {}, refused {:?}, faults {:?}\n",
            self.simulator.accepted, self.simulator.refused, self.simulator.faults
        );
        out += "\n| process | starts | RSS first third | last third | bound |\n|---|---:|---:|---:|---:|\n";
        for m in &self.memory {
            out += &format!(
                "| {} | {} | {:.1} MiB | {:.1} MiB | {:.1} MiB |\n",
                m.process,
                m.instances,
                m.first_third_max_kib as f64 / 1024.0,
                m.last_third_max_kib as f64 / 1024.0,
                m.bound_kib as f64 / 1024.0
            );
        }
        if !self.keys.violations.is_empty() {
            out += "\nkey violations:\n";
            for v in &self.keys.violations {
                out += &format!("  {v}\n");
            }
        }
        out += &format!("\nverdict: {}\n", if self.passed { "PASS" } else { "FAIL" });
        out
    }
}
