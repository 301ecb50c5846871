//! docker-compose.yml, its configuration files and HAProxy, against the binaries.

use std::collections::HashMap;
use std::time::Duration;

use sluice_deploy_check::{interpolate, parse_env_file, read, required_vars};

use crate::common::{compose, environment, host_port, listen_port, load_config, services};

const GATEWAYS: [&str; 3] = ["gateway-1", "gateway-2", "gateway-3"];

/// What compose substitutes when the user copied .env.example (real mode) or has no .env
/// (demo): the interpolated environment of a gateway, plus the file it mounts.
fn gateway_env(dotenv: &HashMap<String, String>) -> (HashMap<String, String>, String) {
    let c = compose();
    let g = &services(&c)["gateway-1"];
    let env = environment(g)
        .into_iter()
        .map(|(k, v)| (k, interpolate(&v, dotenv)))
        .collect();
    let volume = interpolate(g["volumes"][0].as_str().expect("the config volume"), dotenv);
    let (host, container) = volume.split_once(':').expect("host:container");
    assert_eq!(container, "/etc/sluice/sluice.toml:ro");
    (env, host.to_owned())
}

fn file(path: &str) -> String {
    read(path.trim_start_matches("./"))
}

#[test]
fn services_and_profiles() {
    let c = compose();
    let s = services(&c);
    for name in ["redis", "lb", "sidecar"].iter().chain(GATEWAYS.iter()) {
        assert!(s.contains_key(*name), "service {name}");
        assert!(
            s[*name].get("profiles").is_none(),
            "{name} runs without a profile"
        );
    }
    assert_eq!(s["sim"]["profiles"], serde_json::json!(["demo"]));
    for m in ["prometheus", "grafana"] {
        assert_eq!(s[m]["profiles"], serde_json::json!(["monitoring"]));
    }
    // The three gateways are one definition.
    for g in &GATEWAYS[1..] {
        assert_eq!(s[*g], s["gateway-1"], "{g} differs from gateway-1");
    }
    // Only the balancer, the sidecar, the simulator and monitoring publish ports, and all
    // but the balancer only on 127.0.0.1.
    for (name, svc) in s {
        let Some(ports) = svc["ports"].as_array() else {
            continue;
        };
        for p in ports {
            let p = p.as_str().unwrap();
            if name != "lb" {
                assert!(
                    p.starts_with("127.0.0.1:"),
                    "{name} publishes {p} beyond loopback"
                );
            }
        }
    }
}

#[test]
fn build_targets_exist_in_the_dockerfile() {
    let c = compose();
    let df = sluice_deploy_check::dockerfile::Dockerfile::parse(&read("Dockerfile"));
    for (name, svc) in services(&c) {
        if let Some(target) = svc["build"]["target"].as_str() {
            assert!(df.stage(target).is_some(), "{name}: no stage {target}");
            assert_eq!(svc["build"]["dockerfile"], "Dockerfile");
            let image = svc["image"].as_str().unwrap();
            assert!(
                image.contains(&format!("/{target}:")),
                "{name}: image {image} vs target {target}"
            );
        }
    }
}

#[test]
fn demo_config_loads_and_matches_the_stack() {
    let (env, path) = gateway_env(&HashMap::new());
    assert_eq!(
        path, "./deploy/compose/sluice.demo.toml",
        "no .env means the demo"
    );
    let config = load_config(&file(&path), &env).expect("sluice.demo.toml loads");
    check_common(&config);
    // The upstream is the simulator service, on its port, with its accounts.
    let c = compose();
    let sim_svc = &services(&c)["sim"];
    let sim_text = read("deploy/compose/sim.demo.toml");
    assert_eq!(
        sim_svc["command"],
        serde_json::json!(["--config", "/etc/sluice/sim.toml"])
    );
    assert_eq!(
        sim_svc["volumes"][0],
        "./deploy/compose/sim.demo.toml:/etc/sluice/sim.toml:ro"
    );
    let sim = sluice_sim::Config::from_toml_str(&sim_text).expect("sim.demo.toml loads");
    let (host, port, path) = host_port(&config.upstreams[0].base_url);
    assert_eq!((host.as_str(), path.as_str()), ("sim", "/v1"));
    assert_eq!(port, sim.listen.port());
    let sim_keys: toml::Table = toml::from_str(&sim_text).unwrap();
    let mut keys: Vec<&str> = sim_keys["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["key"].as_str().unwrap())
        .collect();
    let mut ours: Vec<&str> = config.upstreams[0]
        .keys
        .iter()
        .map(|k| k.expose())
        .collect();
    keys.sort();
    ours.sort();
    assert_eq!(
        ours, keys,
        "the gateways' keys are the simulator's accounts"
    );
    // Same limits on the same (scaled) windows, model by model.
    for m in &config.models {
        let s = sim
            .models
            .iter()
            .find(|s| s.name == m.upstream_model)
            .expect("model served by the sim");
        let mut theirs: Vec<(String, u64, Duration)> = s
            .limits
            .iter()
            .map(|l| {
                (
                    format!("{:?}", l.unit),
                    l.amount,
                    l.window.mul_f64(sim.window_scale),
                )
            })
            .collect();
        let mut ours: Vec<(String, u64, Duration)> = m
            .limits
            .iter()
            .map(|l| (format!("{:?}", l.unit), l.amount.get(), l.per))
            .collect();
        theirs.sort();
        ours.sort();
        assert_eq!(
            ours, theirs,
            "model {}: gateway vs simulator limits",
            m.name
        );
    }
}

#[test]
fn provider_config_loads_with_the_env_example() {
    let dotenv = parse_env_file(&read(".env.example"));
    let (env, path) = gateway_env(&dotenv);
    assert_eq!(
        path, "./deploy/compose/sluice.toml",
        ".env.example selects the provider"
    );
    let text = file(&path);
    // Every variable the file needs is passed to the gateways and named in .env.example.
    for var in required_vars(&text) {
        assert!(
            env.contains_key(&var),
            "{var} is not passed to the gateways"
        );
        assert!(dotenv.contains_key(&var), "{var} is not in .env.example");
    }
    let config = load_config(&text, &env).expect("sluice.toml loads with .env.example");
    check_common(&config);
    assert!(
        config
            .upstreams
            .iter()
            .all(|u| u.base_url.starts_with("https://"))
    );
}

/// What both compose configurations must agree on with the compose file.
fn check_common(config: &sluice_config::Config) {
    // The gateways listen on 0.0.0.0 in their containers: the check they make at start.
    config
        .check_exposure()
        .expect("the gateway would refuse to start with this configuration");
    let c = compose();
    let s = services(&c);
    assert_eq!(config.server.listen.port(), 8080);
    let store = config.store.as_ref().expect("a shared store");
    let (host, port, _) = host_port(store.redis_url.expose());
    assert_eq!(
        (host.as_str(), port),
        ("redis", 6379),
        "redis_url names the redis service"
    );
    let redis_cmd = s["redis"]["command"].as_array().unwrap();
    assert!(
        !redis_cmd.iter().any(|a| a == "--port"),
        "redis listens on 6379"
    );
    assert_eq!(store.expected_replicas.get() as usize, GATEWAYS.len());
    // The gateway healthcheck hits a path it serves on the port it listens on.
    let hc = s["gateway-1"]["healthcheck"]["test"].as_array().unwrap();
    let url = hc.last().unwrap().as_str().unwrap();
    let (_, port, path) = host_port(url);
    assert_eq!(port, config.server.listen.port());
    assert!(["/healthz", "/readyz"].contains(&path.as_str()), "{url}");
    assert_eq!(s["gateway-1"]["expose"], serde_json::json!(["8080"]));
}

#[test]
fn haproxy_balances_the_gateways() {
    let cfg = read("deploy/compose/haproxy.cfg");
    let c = compose();
    let s = services(&c);
    let servers: Vec<(String, u16)> = cfg
        .lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix("server "))
        .map(|l| {
            let addr = l.split_whitespace().nth(1).unwrap();
            let (h, p) = addr.rsplit_once(':').unwrap();
            (h.to_owned(), p.parse().unwrap())
        })
        .collect();
    let hosts: Vec<&str> = servers.iter().map(|(h, _)| h.as_str()).collect();
    assert_eq!(hosts, GATEWAYS, "one server line per gateway service");
    assert!(servers.iter().all(|(_, p)| *p == 8080));
    assert!(cfg.contains("option httpchk GET /healthz"));
    assert!(
        cfg.contains("nameserver dns 127.0.0.11:53"),
        "Docker's DNS re-resolves restarted gateways"
    );
    let bind = cfg
        .lines()
        .find_map(|l| l.trim().strip_prefix("bind "))
        .unwrap();
    let lb = &s["lb"];
    let published = lb["ports"][0].as_str().unwrap();
    assert!(
        published.ends_with(&format!(":{}", listen_port(bind))),
        "{published} vs bind {bind}"
    );
    assert_eq!(
        lb["volumes"][0],
        "./deploy/compose/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro"
    );
    let monitor = cfg
        .lines()
        .find_map(|l| l.trim().strip_prefix("monitor-uri "))
        .unwrap();
    let hc = lb["healthcheck"]["test"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .as_str()
        .unwrap();
    assert!(hc.contains(monitor) && hc.contains(&format!("/{}", listen_port(bind))));
    for g in GATEWAYS {
        assert!(lb["depends_on"].as_array().unwrap().iter().any(|d| d == g));
    }
}

#[test]
fn sidecar_listens_where_it_is_published_and_probed() {
    let c = compose();
    let sc = &services(&c)["sidecar"];
    let env = environment(sc);
    let listen = &env["SLUICE_SIDECAR__LISTEN"];
    assert_eq!(listen, &env["SLUICE_SIDECAR_LISTEN"]);
    let port = listen_port(listen);
    let published = sc["ports"][0].as_str().unwrap();
    assert!(published.ends_with(&format!(":{port}")), "{published}");
    let hc = sc["healthcheck"]["test"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .as_str()
        .unwrap();
    let (_, hc_port, path) = host_port(hc);
    assert_eq!((hc_port, path.as_str()), (port, "/healthz"));
    // The sidecar reads the gateways' file and secrets.
    let g = &services(&c)["gateway-1"];
    assert_eq!(sc["volumes"], g["volumes"]);
    for k in environment(g).keys() {
        assert!(env.contains_key(k), "sidecar lacks {k}");
    }
    // And the real loader takes that override.
    let mut e: HashMap<String, String> = HashMap::new();
    e.insert("SLUICE_SIDECAR__LISTEN".into(), listen.clone());
    let config = load_config(&read("deploy/compose/sluice.demo.toml"), &e).unwrap();
    assert_eq!(config.sidecar.listen.port(), port);
}

#[test]
fn simulator_is_probed_and_published() {
    let c = compose();
    let sim = &services(&c)["sim"];
    let text = read("deploy/compose/sim.demo.toml");
    let config = sluice_sim::Config::from_toml_str(&text).unwrap();
    assert_eq!(
        config.listen.ip().to_string(),
        "0.0.0.0",
        "reachable from the gateways"
    );
    let hc = sim["healthcheck"]["test"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .as_str()
        .unwrap();
    let (_, port, path) = host_port(hc);
    assert_eq!((port, path.as_str()), (config.listen.port(), "/health"));
    let published = sim["ports"][0].as_str().unwrap();
    assert!(published.ends_with(&format!(":{}", config.listen.port())));
}

#[test]
fn env_example_covers_every_compose_variable() {
    let text = read("docker-compose.yml");
    let dotenv = parse_env_file(&read(".env.example"));
    // Every ${VAR} compose substitutes has a default or a line in .env.example.
    for var in required_vars(&text) {
        assert!(
            dotenv.contains_key(&var),
            "{var} has no default and is not in .env.example"
        );
    }
    assert_eq!(
        dotenv.get("SLUICE_CONFIG_FILE").map(String::as_str),
        Some("sluice.toml")
    );
}
