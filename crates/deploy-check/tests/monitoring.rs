//! Prometheus targets and the Grafana dashboard against the services and the metrics
//! the code emits.

use std::collections::BTreeSet;

use serde_json::Value;
use sluice_deploy_check::{metrics, read, repo_root, yaml};

use crate::common::{compose, services};

#[test]
fn prometheus_scrapes_every_sluice_service() {
    let p = yaml::document(&read("deploy/prometheus/prometheus.yml")).unwrap();
    let c = compose();
    let s = services(&c);
    let mut targets = BTreeSet::new();
    for job in p["scrape_configs"].as_array().unwrap() {
        assert_eq!(job["metrics_path"], "/metrics");
        for sc in job["static_configs"].as_array().unwrap() {
            for t in sc["targets"].as_array().unwrap() {
                let (host, port) = t.as_str().unwrap().split_once(':').unwrap();
                let svc = &s[host];
                let exposed = svc["expose"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|e| e == port)
                    || svc["ports"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|e| e.as_str().unwrap().ends_with(&format!(":{port}")));
                assert!(exposed, "{host} does not listen on {port}");
                targets.insert(host.to_owned());
            }
        }
    }
    let sluice: BTreeSet<String> = s
        .iter()
        .filter(|(_, v)| {
            v["image"]
                .as_str()
                .is_some_and(|i| i.contains("/gateway:") || i.contains("/sidecar:"))
        })
        .map(|(k, _)| k.clone())
        .collect();
    assert_eq!(targets, sluice);
    let k8s = yaml::document(&read("deploy/prometheus/kubernetes-scrape.yml")).unwrap();
    let text = serde_json::to_string(&k8s).unwrap();
    for a in [
        "prometheus_io_scrape",
        "prometheus_io_port",
        "prometheus_io_path",
    ] {
        assert!(text.contains(a), "the Kubernetes job reads {a}");
    }
}

#[test]
fn grafana_is_provisioned_with_the_dashboard() {
    let c = compose();
    let g = &services(&c)["grafana"];
    let vols: Vec<&str> = g["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let dash_dir = yaml::document(&read("deploy/grafana/provisioning/dashboards/sluice.yml"))
        .unwrap()["providers"][0]["options"]["path"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(vols.contains(&format!("./deploy/grafana/dashboards:{dash_dir}:ro").as_str()));
    assert!(vols.contains(&"./deploy/grafana/provisioning:/etc/grafana/provisioning:ro"));
    let ds = yaml::document(&read(
        "deploy/grafana/provisioning/datasources/prometheus.yml",
    ))
    .unwrap();
    let ds = &ds["datasources"][0];
    assert_eq!(ds["url"], "http://prometheus:9090");
    let dash: Value = serde_json::from_str(&read("deploy/grafana/dashboards/sluice.json")).unwrap();
    for p in dash["panels"].as_array().unwrap() {
        assert_eq!(p["datasource"]["uid"], ds["uid"], "panel {}", p["title"]);
    }
}

#[test]
fn dashboard_shows_what_the_issue_asks_with_metrics_that_exist() {
    let dash: Value = serde_json::from_str(&read("deploy/grafana/dashboards/sluice.json")).unwrap();
    let panels = dash["panels"].as_array().unwrap();
    let titles: Vec<&str> = panels
        .iter()
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    for t in [
        "Quota usage against limit",
        "Effective vs configured limits",
        "Queue wait",
        "Upstream 429s",
    ] {
        assert!(titles.contains(&t), "no panel {t}");
    }
    let mut used = BTreeSet::new();
    for p in panels {
        for t in p["targets"].as_array().unwrap() {
            used.extend(metrics::names_in_promql(t["expr"].as_str().unwrap()));
        }
    }
    let emitted = metrics::emitted(&repo_root());
    for m in &used {
        assert!(
            emitted.contains(m),
            "the dashboard queries {m}, which no crate emits"
        );
    }
    for m in [
        "sluice_queue_wait_seconds",
        "sluice_upstream_errors_total",
        "sluice_requests_total",
        "sluice_effective_limit",
        "sluice_configured_limit",
        "sluice_window_used",
    ] {
        assert!(used.contains(m), "the dashboard does not show {m}");
    }
}
