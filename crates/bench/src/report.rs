//! The report: the comparison table for the terminal, JSON for machines and a
//! self-contained HTML page (inline SVG, no script, no network) for people.

use std::fmt::Write as _;

use serde::Serialize;

use crate::runner::{ModeRun, Tick};
use crate::scenario::Scenario;
use crate::summary::{Percentiles, Summary};

/// A chart line: name, colour, points.
type Series = (String, &'static str, Vec<(f64, f64)>);
/// A table row: label and how to fill a mode's cell.
type Row = (&'static str, Box<dyn Fn(&Summary) -> String>);

/// The whole report of a run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The scenario played.
    pub scenario: Scenario,
    /// Requests/s and tokens/s the limits allow.
    pub capacity_per_sec: (f64, f64),
    /// Mean demand, requests/s and tokens/s.
    pub demand_per_sec: (f64, f64),
    /// What ran: how many gateways, Redis or embedded, sidecar or not.
    pub setup: String,
    /// Per mode.
    pub modes: Vec<Summary>,
    /// Per mode, the referee's ticks.
    pub timelines: Vec<(String, Vec<Tick>)>,
    /// The definitions of every figure.
    pub definitions: &'static str,
}

/// The definitions, as printed under the table and in the HTML page.
pub const DEFINITIONS: &str = "\
quota used = successes started by the provider within the run window / what the limits allow \
in that window (long-run rate), for requests and for tokens; the larger (binding) one is shown. \
upstream 429s = refusals counted by the simulator (the referee). client failures = requests \
that did not succeed within their deadline. queue wait = end-to-end latency minus the \
provider's (known) service time. fairness = Jain's index over each service's successes ÷ its \
max-min fair share (water-filling of all successes over the services' demands); worst = the \
lowest such ratio.";

impl Report {
    /// Builds the report.
    pub fn new(scenario: &Scenario, setup: String, runs: &[ModeRun], modes: Vec<Summary>) -> Self {
        let n = scenario.duration_secs;
        let schedule = crate::fleet::schedule(scenario);
        let req = schedule.len() as f64 / n;
        let tok = schedule
            .iter()
            .map(|a| (a.prompt_tokens + a.output_tokens) as f64)
            .sum::<f64>()
            / n;
        Self {
            scenario: scenario.clone(),
            capacity_per_sec: scenario.provider.capacity_per_sec(),
            demand_per_sec: (req, tok),
            setup,
            modes,
            timelines: runs
                .iter()
                .map(|r| (r.mode.as_str().to_owned(), r.ticks.clone()))
                .collect(),
            definitions: DEFINITIONS,
        }
    }

    /// The comparison table, for the terminal and for Markdown.
    pub fn table(&self) -> String {
        let pct = |v: f64| format!("{:.1}%", v * 100.0);
        let p3 = |p: &Percentiles| format!("{:.0} / {:.0} / {:.0}", p.p50, p.p99, p.p999);
        let rows: Vec<Row> = vec![
            ("requests sent", Box::new(move |s| s.offered.to_string())),
            (
                "quota used for successes",
                Box::new(move |s| {
                    format!(
                        "{} (req {}, tok {})",
                        pct(s.quota_share),
                        pct(s.goodput_requests),
                        pct(s.goodput_tokens)
                    )
                }),
            ),
            (
                "upstream 429s",
                Box::new(move |s| s.upstream_429s.to_string()),
            ),
            ("successes", Box::new(move |s| s.ok.to_string())),
            (
                "client failures",
                Box::new(move |s| {
                    format!(
                        "{} ({})",
                        s.failed,
                        pct(s.failed as f64 / s.offered.max(1) as f64)
                    )
                }),
            ),
            (
                "  429 / deadline / error",
                Box::new(move |s| {
                    format!(
                        "{} / {} / {}",
                        s.failed_rate_limited, s.failed_deadline, s.failed_error
                    )
                }),
            ),
            (
                "latency p50/p99/p999 ms",
                Box::new(move |s| p3(&s.latency_ms)),
            ),
            (
                "queue wait p50/p99/p999 ms",
                Box::new(move |s| p3(&s.queue_wait_ms)),
            ),
            (
                "fairness Jain (worst)",
                Box::new(move |s| format!("{:.3} ({:.2})", s.fairness_jain, s.fairness_worst)),
            ),
            (
                "peak per window vs limit",
                Box::new(move |s| {
                    s.peaks
                        .iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(" / ")
                }),
            ),
        ];
        let limits: Vec<String> = self
            .scenario
            .provider
            .limits()
            .iter()
            .map(|l| l.1.to_string())
            .collect();
        let mut cells: Vec<Vec<String>> = Vec::new();
        let mut head = vec![String::new()];
        head.extend(self.modes.iter().map(|m| m.mode.clone()));
        cells.push(head);
        for (name, f) in &rows {
            let mut row = vec![(*name).to_owned()];
            row.extend(self.modes.iter().map(f));
            cells.push(row);
        }
        let mut limit_row = vec!["  (limits)".to_owned()];
        limit_row.extend(self.modes.iter().map(|_| limits.join(" / ")));
        cells.push(limit_row);
        let widths: Vec<usize> = (0..cells[0].len())
            .map(|c| {
                cells
                    .iter()
                    .map(|r| r[c].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for (i, row) in cells.iter().enumerate() {
            out.push('|');
            for (c, cell) in row.iter().enumerate() {
                let pad = widths[c] - cell.chars().count();
                if c == 0 {
                    let _ = write!(out, " {cell}{} |", " ".repeat(pad));
                } else {
                    let _ = write!(out, " {}{cell} |", " ".repeat(pad));
                }
            }
            out.push('\n');
            if i == 0 {
                out.push('|');
                for (c, w) in widths.iter().enumerate() {
                    let dash = "-".repeat(*w);
                    if c == 0 {
                        let _ = write!(out, "-{dash}-|");
                    } else {
                        let _ = write!(out, "-{dash}:|");
                    }
                }
                out.push('\n');
            }
        }
        out
    }

    /// The per-service breakdown (demand, successes, fair share), one line per service.
    pub fn services_table(&self) -> String {
        let mut out = String::from("| service |");
        for m in &self.modes {
            let _ = write!(out, " {} ok / fair share |", m.mode);
        }
        out += "\n|---|";
        out += &"---:|".repeat(self.modes.len());
        out.push('\n');
        for (i, svc) in self.scenario.services.iter().enumerate() {
            let demand = self
                .modes
                .first()
                .map(|m| m.services[i].demand)
                .unwrap_or(0);
            let _ = write!(out, "| {} (sent {demand}) |", svc.name);
            for m in &self.modes {
                let s = &m.services[i];
                let _ = write!(out, " {} / {:.0} |", s.ok, s.fair_share);
            }
            out.push('\n');
        }
        out
    }

    /// JSON for machines.
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).expect("serializable")
    }

    /// A self-contained HTML page.
    pub fn html(&self) -> String {
        let colors = ["#d62728", "#ff7f0e", "#2ca02c", "#1f77b4", "#9467bd"];
        let series = |f: &dyn Fn(&Tick) -> u64| -> Vec<Series> {
            self.timelines
                .iter()
                .enumerate()
                .map(|(i, (name, ticks))| (name.clone(), colors[i % colors.len()], rates(ticks, f)))
                .collect()
        };
        let (cap_req, cap_tok) = self.capacity_per_sec;
        let mut h = String::new();
        h += "<!doctype html><html><head><meta charset=\"utf-8\"><title>sluice-bench report</title>\
              <style>body{font:14px system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}\
              table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}\
              td:first-child,th:first-child{text-align:left}svg{display:block;margin:1em 0}\
              .note{color:#555;font-size:13px}</style></head><body>";
        h += "<h1>sluice-bench: one quota, many replicas</h1>";
        let _ = write!(
            h,
            "<p>{} services × replicas ({} replicas in all) share one account of <b>{}</b> \
             ({} RPM / {} TPM / {} RPS, windows × {}). Limits allow {:.0} requests/s and {:.0} tokens/s; \
             mean demand {:.0} requests/s ({:.2}×) and {:.0} tokens/s ({:.2}×). Run window {} s. {}</p>",
            self.scenario.services.len(),
            self.scenario.replicas(),
            esc(&self.scenario.provider.model),
            self.scenario.provider.rpm,
            self.scenario.provider.tpm,
            self.scenario.provider.rps,
            self.scenario.provider.window_scale,
            cap_req,
            cap_tok,
            self.demand_per_sec.0,
            self.demand_per_sec.0 / cap_req,
            self.demand_per_sec.1,
            self.demand_per_sec.1 / cap_tok,
            self.scenario.duration_secs,
            esc(&self.setup),
        );
        h += "<h2>Comparison</h2>";
        h += &md_to_html(&self.table());
        let _ = write!(h, "<p class=\"note\">{}</p>", esc(DEFINITIONS));
        h += "<h2>Per service</h2>";
        h += &md_to_html(&self.services_table());
        h += &line_chart(
            "Requests admitted by the provider per second (referee)",
            &series(&|t| t.accepted),
            Some(("request limit", cap_req)),
        );
        h += &line_chart(
            "Tokens settled by the provider per second (referee)",
            &series(&|t| t.tokens),
            Some(("token limit", cap_tok)),
        );
        h += &line_chart(
            "Upstream 429s per second (referee)",
            &series(&|t| t.refused),
            None,
        );
        h += &latency_chart(&self.modes, &colors);
        h += "</body></html>\n";
        h
    }
}

/// Per-second rates of a cumulative counter between consecutive ticks.
fn rates(ticks: &[Tick], f: &dyn Fn(&Tick) -> u64) -> Vec<(f64, f64)> {
    ticks
        .windows(2)
        .filter(|w| w[1].t > w[0].t)
        .map(|w| {
            let dv = f(&w[1]).saturating_sub(f(&w[0])) as f64;
            (w[1].t, dv / (w[1].t - w[0].t))
        })
        .collect()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A Markdown table (as [`Report::table`] writes it) as an HTML table.
fn md_to_html(md: &str) -> String {
    let mut out = String::from("<table>");
    for (i, line) in md.lines().enumerate() {
        if i == 1 {
            continue;
        }
        let tag = if i == 0 { "th" } else { "td" };
        out += "<tr>";
        for cell in line.trim().trim_matches('|').split('|') {
            let _ = write!(out, "<{tag}>{}</{tag}>", esc(cell.trim()));
        }
        out += "</tr>";
    }
    out + "</table>"
}

const W: f64 = 900.0;
const H: f64 = 260.0;
const PAD: f64 = 50.0;

fn line_chart(title: &str, series: &[Series], hline: Option<(&str, f64)>) -> String {
    let xmax = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    let ymax = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.1))
        .chain(hline.map(|h| h.1))
        .fold(1.0, f64::max)
        * 1.1;
    let x = |v: f64| PAD + v / xmax * (W - 2.0 * PAD);
    let y = |v: f64| H - PAD + 10.0 - v / ymax * (H - PAD - 20.0);
    let mut s = format!(
        "<h3>{}</h3><svg width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" xmlns=\"http://www.w3.org/2000/svg\">",
        esc(title)
    );
    let _ = write!(
        s,
        "<line x1=\"{PAD}\" y1=\"{y0}\" x2=\"{x1}\" y2=\"{y0}\" stroke=\"#999\"/>\
         <line x1=\"{PAD}\" y1=\"10\" x2=\"{PAD}\" y2=\"{y0}\" stroke=\"#999\"/>",
        y0 = y(0.0),
        x1 = W - PAD
    );
    for i in 0..=4 {
        let v = ymax / 1.1 * f64::from(i) / 4.0;
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">{}</text>",
            PAD - 4.0,
            y(v) + 4.0,
            short(v)
        );
    }
    let _ = write!(
        s,
        "<text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"middle\">seconds → (last point: until the last request ended)</text>",
        W / 2.0,
        H - 12.0
    );
    if let Some((label, v)) = hline {
        let _ = write!(
            s,
            "<line x1=\"{PAD}\" y1=\"{yv}\" x2=\"{x1}\" y2=\"{yv}\" stroke=\"#000\" stroke-dasharray=\"6 4\"/>\
             <text x=\"{x1}\" y=\"{ty}\" font-size=\"11\" text-anchor=\"end\">{} {}</text>",
            esc(label),
            short(v),
            yv = y(v),
            ty = y(v) - 4.0,
            x1 = W - PAD
        );
    }
    for (i, (name, color, pts)) in series.iter().enumerate() {
        let path: Vec<String> = pts
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.0), y(p.1)))
            .collect();
        let _ = write!(
            s,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\
             <rect x=\"{lx}\" y=\"{ly}\" width=\"12\" height=\"3\" fill=\"{color}\"/>\
             <text x=\"{tx}\" y=\"{ty}\" font-size=\"12\">{}</text>",
            path.join(" "),
            esc(name),
            lx = PAD + 10.0 + 90.0 * i as f64,
            ly = 14.0,
            tx = PAD + 26.0 + 90.0 * i as f64,
            ty = 19.0
        );
    }
    s + "</svg>"
}

fn latency_chart(modes: &[Summary], colors: &[&str]) -> String {
    let groups = ["p50", "p99", "p999"];
    let pick = |p: &Percentiles, g: usize| [p.p50, p.p99, p.p999][g];
    let ymax = modes.iter().map(|m| m.latency_ms.p999).fold(1.0, f64::max) * 1.1;
    let mut s = format!(
        "<h3>End-to-end latency of successes (ms)</h3><svg width=\"{W}\" height=\"{H}\" xmlns=\"http://www.w3.org/2000/svg\">"
    );
    let gw = (W - 2.0 * PAD) / groups.len() as f64;
    let bw = gw / (modes.len() as f64 + 1.0);
    for (g, name) in groups.iter().enumerate() {
        let gx = PAD + gw * g as f64;
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{}\" font-size=\"12\" text-anchor=\"middle\">{name}</text>",
            gx + gw / 2.0,
            H - 12.0
        );
        for (i, m) in modes.iter().enumerate() {
            let v = pick(&m.latency_ms, g);
            let h = v / ymax * (H - PAD - 20.0);
            let bx = gx + bw * (i as f64 + 0.5);
            let _ = write!(
                s,
                "<rect x=\"{bx:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{}\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\">{} {}</text>",
                H - PAD + 10.0 - h,
                bw * 0.9,
                colors[i % colors.len()],
                bx + bw * 0.45,
                H - PAD + 6.0 - h,
                esc(&m.mode),
                short(v)
            );
        }
    }
    s + "</svg>"
}

fn short(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_per_second_differences() {
        let t = |t: f64, a: u64| Tick {
            t,
            accepted: a,
            ..Tick::default()
        };
        let r = rates(&[t(0.0, 0), t(1.0, 100), t(2.0, 190), t(2.5, 200)], &|x| {
            x.accepted
        });
        assert_eq!(r, vec![(1.0, 100.0), (2.0, 90.0), (2.5, 20.0)]);
    }

    #[test]
    fn markdown_tables_become_html_without_markup_injection() {
        let html = md_to_html("| a | <b> |\n|---|---:|\n| x | 1 |\n");
        assert_eq!(
            html,
            "<table><tr><th>a</th><th>&lt;b&gt;</th></tr><tr><td>x</td><td>1</td></tr></table>"
        );
    }
}
