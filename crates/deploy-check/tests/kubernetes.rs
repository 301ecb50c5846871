//! deploy/kubernetes rendered (by the minimal renderer, and by `kubectl kustomize` when
//! kubectl is installed) and checked: selectors, ports, probes, the ConfigMap loaded by
//! the real config loader with the Secret's variables, the native sidecar, HPA and PDB.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use sluice_deploy_check::{kustomize, read, repo_root, yaml};

use crate::common::{host_port, load_config, served_paths};

const NAMESPACE: &str = "sluice";

/// Every rendering of `dir` available here: (how, objects).
fn renderings(dir: &str) -> Vec<(String, Vec<Value>)> {
    let path = repo_root().join(dir);
    let mut out = vec![(
        "minimal renderer".to_owned(),
        kustomize::render(&path).unwrap(),
    )];
    if let Some(objs) = kubectl_kustomize(&path) {
        out.push(("kubectl kustomize".to_owned(), objs));
    }
    out
}

fn kubectl_kustomize(dir: &Path) -> Option<Vec<Value>> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(yaml::documents(&String::from_utf8(out.stdout).unwrap()).unwrap())
}

/// The objects with the content hash of generated ConfigMaps removed from their names
/// and from every reference to them, sorted by kind and name.
fn normalized(objs: &[Value]) -> Vec<Value> {
    let mut text = serde_json::to_string(objs).unwrap();
    for o in objs.iter().filter(|o| o["kind"] == "ConfigMap") {
        let name = o["metadata"]["name"].as_str().unwrap();
        if let Some((base, hash)) = name.rsplit_once('-')
            && hash.len() == 10
            && hash.chars().all(|c| c.is_ascii_alphanumeric())
        {
            text = text.replace(&format!("\"{name}\""), &format!("\"{base}\""));
        }
    }
    let mut v: Vec<Value> = serde_json::from_str(&text).unwrap();
    v.sort_by_key(|o| format!("{}/{}", o["kind"], o["metadata"]["name"]));
    v
}

fn secret_example() -> (String, HashMap<String, String>) {
    let s = yaml::document(&read("deploy/kubernetes/secret.example.yaml")).unwrap();
    assert_eq!(s["kind"], "Secret");
    assert_eq!(s["metadata"]["namespace"], NAMESPACE);
    let data = s["stringData"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    (s["metadata"]["name"].as_str().unwrap().to_owned(), data)
}

fn of_kind<'a>(objs: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    objs.iter().filter(move |o| o["kind"] == kind)
}

fn named<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    let sel = selector.as_object().expect("a selector mapping");
    !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn pod_containers(deploy: &Value) -> Vec<&Value> {
    let spec = &deploy["spec"]["template"]["spec"];
    ["initContainers", "containers"]
        .iter()
        .filter_map(|k| spec[*k].as_array())
        .flatten()
        .collect()
}

/// The container port a Service or probe port (a number or a name) designates.
fn resolve_port(deploy: &Value, port: &Value) -> Option<u16> {
    pod_containers(deploy).iter().find_map(|c| {
        c["ports"].as_array()?.iter().find_map(|p| {
            let n = p["containerPort"].as_u64()? as u16;
            let hit = match port {
                Value::Number(x) => x.as_u64() == Some(u64::from(n)),
                Value::String(s) => p["name"] == s.as_str() || s.parse::<u16>() == Ok(n),
                _ => false,
            };
            hit.then_some(n)
        })
    })
}

fn binary_of(image: &str) -> Option<&'static str> {
    let (base, _) = kustomize::split_image(image);
    match base.rsplit('/').next()? {
        "gateway" if base.starts_with("sluice/") => Some("sluice-gateway"),
        "sidecar" if base.starts_with("sluice/") => Some("sluice-sidecar"),
        _ => None,
    }
}

/// Checks one probe of a Sluice container listening on `port`.
fn check_probe(
    how: &str,
    deploy: &Value,
    container: &str,
    binary: &str,
    kind: &str,
    probe: &Value,
    port: u16,
) {
    let at = format!("{how}: {} {container} {kind}", deploy["metadata"]["name"]);
    if let Some(get) = probe.get("httpGet") {
        let path = get["path"].as_str().unwrap();
        assert!(
            served_paths(binary).contains(&path),
            "{at}: {binary} does not serve {path}"
        );
        assert_eq!(
            resolve_port(deploy, &get["port"]),
            Some(port),
            "{at}: probe port"
        );
    } else if let Some(exec) = probe.get("exec") {
        let cmd: Vec<&str> = exec["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let url = cmd
            .iter()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("{at}: {cmd:?}"));
        let (host, p, path) = host_port(url);
        assert_eq!((host.as_str(), p), ("127.0.0.1", port), "{at}: {url}");
        assert!(
            served_paths(binary).contains(&path.as_str()),
            "{at}: {path}"
        );
    } else {
        panic!("{at}: neither httpGet nor exec");
    }
}

/// Every check that holds for any rendering of any of our kustomizations.
fn check_all(how: &str, objs: &[Value]) {
    let (secret_name, secret) = secret_example();
    let config_maps: HashMap<&str, &Value> = of_kind(objs, "ConfigMap")
        .map(|c| (c["metadata"]["name"].as_str().unwrap(), c))
        .collect();

    for o in objs {
        if o["kind"] != "Namespace" {
            assert_eq!(
                o["metadata"]["namespace"], NAMESPACE,
                "{how}: {} {}",
                o["kind"], o["metadata"]["name"]
            );
        }
    }

    for d in of_kind(objs, "Deployment") {
        let name = d["metadata"]["name"].as_str().unwrap();
        let at = format!("{how}: Deployment {name}");
        let template = &d["spec"]["template"];
        assert!(
            labels_match(
                &d["spec"]["selector"]["matchLabels"],
                &template["metadata"]["labels"]
            ),
            "{at}: selector"
        );
        assert_eq!(
            template["spec"]["securityContext"]["runAsNonRoot"], true,
            "{at}: runAsNonRoot"
        );
        let volumes = template["spec"]["volumes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut sluice_ports = Vec::new();
        for c in pod_containers(d) {
            let cname = c["name"].as_str().unwrap();
            let image = c["image"].as_str().unwrap();
            let requests = &c["resources"]["requests"];
            assert!(
                requests["cpu"].is_string() && requests["memory"].is_string(),
                "{at}/{cname}: requests"
            );
            let Some(binary) = binary_of(image) else {
                continue;
            };
            let (_, tag) = kustomize::split_image(image);
            assert!(
                tag.is_some_and(|t| t != "latest"),
                "{at}/{cname}: {image} has no pinned tag"
            );
            // Configuration: --config names the key of the mounted ConfigMap.
            let args: Vec<&str> = c["args"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap())
                .collect();
            let config_path = args
                .windows(2)
                .find(|w| w[0] == "--config")
                .map(|w| w[1])
                .expect("--config");
            let (dir, key) = config_path.rsplit_once('/').unwrap();
            let mount = c["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["mountPath"] == dir)
                .unwrap_or_else(|| panic!("{at}/{cname}: nothing mounted at {dir}"));
            let volume = volumes
                .iter()
                .find(|v| v["name"] == mount["name"])
                .expect("the mounted volume");
            let cm_name = volume["configMap"]["name"]
                .as_str()
                .expect("a ConfigMap volume");
            let cm = config_maps
                .get(cm_name)
                .unwrap_or_else(|| panic!("{at}: no ConfigMap {cm_name}"));
            let text = cm["data"][key]
                .as_str()
                .unwrap_or_else(|| panic!("{at}: ConfigMap lacks {key}"));
            // The environment: the Secret by envFrom, then the container's own values.
            let refs: Vec<&str> = c["envFrom"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e["secretRef"]["name"].as_str())
                .collect();
            assert_eq!(refs, [secret_name.as_str()], "{at}/{cname}: envFrom");
            let mut env = secret.clone();
            for e in c["env"].as_array().into_iter().flatten() {
                env.insert(
                    e["name"].as_str().unwrap().to_owned(),
                    e["value"].as_str().unwrap_or_default().to_owned(),
                );
            }
            let config = load_config(text, &env)
                .unwrap_or_else(|e| panic!("{at}/{cname}: sluice.toml: {e}"));
            if binary == "sluice-gateway" {
                // The check the gateway makes at start, beyond loading the file.
                config.check_exposure().unwrap_or_else(|e| {
                    panic!("{at}/{cname}: the gateway would refuse to start: {e}")
                });
            }
            let listen = match binary {
                "sluice-gateway" => config.server.listen,
                _ => config.sidecar.listen,
            };
            let port = listen.port();
            if listen.ip().is_loopback() {
                // Only the pod reaches it: the kubelet cannot, so probes run inside.
                for k in ["startupProbe", "livenessProbe", "readinessProbe"] {
                    assert!(
                        c[k].is_null() || c[k]["exec"].is_object(),
                        "{at}/{cname}: {k} on loopback"
                    );
                }
            } else {
                assert!(
                    resolve_port(d, &Value::from(port)).is_some(),
                    "{at}/{cname}: listens on {port}, not a containerPort"
                );
                sluice_ports.push(port);
            }
            for k in ["startupProbe", "livenessProbe", "readinessProbe"] {
                if !c[k].is_null() {
                    check_probe(how, d, cname, binary, k, &c[k], port);
                }
            }
            assert!(
                !c["readinessProbe"].is_null() || !c["startupProbe"].is_null(),
                "{at}/{cname}: no readiness"
            );
            // The store is a Service of the stack (or whatever SLUICE_REDIS_URL says).
            let store = config.store.as_ref().expect("a shared store");
            let (host, rport, _) = host_port(store.redis_url.expose());
            let svc = named(objs, "Service", &host);
            assert!(
                svc["spec"]["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["port"] == rport),
                "{at}: {host}:{rport}"
            );
            // Every secret the file needs is in the Secret.
            for var in sluice_deploy_check::required_vars(text) {
                assert!(
                    env.contains_key(&var),
                    "{at}/{cname}: ${{{var}}} is not in the Secret or env"
                );
            }
            if binary == "sluice-gateway" {
                let hpa = of_kind(objs, "HorizontalPodAutoscaler")
                    .find(|h| h["spec"]["scaleTargetRef"]["name"] == name)
                    .unwrap_or_else(|| panic!("{at}: no HPA"));
                assert_eq!(
                    hpa["spec"]["maxReplicas"].as_u64(),
                    Some(u64::from(store.expected_replicas.get())),
                    "{at}: store.expected_replicas must be the HPA's maxReplicas"
                );
            }
        }
        // Prometheus annotations name a port a Sluice container serves /metrics on.
        let ann = &template["metadata"]["annotations"];
        if ann["prometheus.io/scrape"] == "true" {
            let port: u16 = ann["prometheus.io/port"].as_str().unwrap().parse().unwrap();
            assert!(
                sluice_ports.contains(&port),
                "{at}: scrape port {port} vs {sluice_ports:?}"
            );
            assert_eq!(ann["prometheus.io/path"], "/metrics");
        } else {
            assert!(
                sluice_ports.is_empty(),
                "{at}: a Sluice container without scrape annotations"
            );
        }
    }

    for s in of_kind(objs, "Service") {
        let at = format!("{how}: Service {}", s["metadata"]["name"]);
        let targets: Vec<&Value> = of_kind(objs, "Deployment")
            .filter(|d| {
                labels_match(
                    &s["spec"]["selector"],
                    &d["spec"]["template"]["metadata"]["labels"],
                )
            })
            .collect();
        assert_eq!(
            targets.len(),
            1,
            "{at}: selects {} Deployments",
            targets.len()
        );
        for p in s["spec"]["ports"].as_array().unwrap() {
            let target = if p["targetPort"].is_null() {
                &p["port"]
            } else {
                &p["targetPort"]
            };
            assert!(
                resolve_port(targets[0], target).is_some(),
                "{at}: targetPort {target}"
            );
        }
    }

    for h in of_kind(objs, "HorizontalPodAutoscaler") {
        let r = &h["spec"]["scaleTargetRef"];
        assert_eq!(
            (r["apiVersion"].as_str(), r["kind"].as_str()),
            (Some("apps/v1"), Some("Deployment"))
        );
        let d = named(objs, "Deployment", r["name"].as_str().unwrap());
        assert_eq!(
            h["spec"]["minReplicas"], d["spec"]["replicas"],
            "{how}: HPA min vs replicas"
        );
        assert!(h["spec"]["maxReplicas"].as_u64() >= h["spec"]["minReplicas"].as_u64());
    }

    for p in of_kind(objs, "PodDisruptionBudget") {
        let at = format!("{how}: PDB {}", p["metadata"]["name"]);
        let targets: Vec<&Value> = of_kind(objs, "Deployment")
            .filter(|d| {
                labels_match(
                    &p["spec"]["selector"]["matchLabels"],
                    &d["spec"]["template"]["metadata"]["labels"],
                )
            })
            .collect();
        assert_eq!(targets.len(), 1, "{at}");
        let replicas = targets[0]["spec"]["replicas"].as_u64().unwrap();
        let max_unavailable = p["spec"]["maxUnavailable"]
            .as_u64()
            .expect("maxUnavailable as a number");
        assert!(
            max_unavailable < replicas,
            "{at}: would allow every replica down"
        );
    }
}

#[test]
fn base_renders_and_lines_up() {
    for (how, objs) in renderings("deploy/kubernetes/base") {
        let mut kinds: Vec<String> = objs
            .iter()
            .map(|o| {
                format!(
                    "{}/{}",
                    o["kind"].as_str().unwrap(),
                    o["metadata"]["name"].as_str().unwrap()
                )
            })
            .collect();
        kinds.sort();
        let cm = kinds
            .iter()
            .find(|k| k.starts_with("ConfigMap/sluice-config"))
            .cloned()
            .unwrap();
        assert_eq!(
            kinds,
            [
                cm.as_str(),
                "Deployment/sluice-gateway",
                "Deployment/sluice-recalibrator",
                "Deployment/sluice-redis",
                "HorizontalPodAutoscaler/sluice-gateway",
                "Namespace/sluice",
                "PodDisruptionBudget/sluice-gateway",
                "Service/sluice-gateway",
                "Service/sluice-recalibrator",
                "Service/sluice-redis",
            ],
            "{how}"
        );
        check_all(&how, &objs);
        for o in &objs {
            assert_eq!(
                o["metadata"]["labels"]["app.kubernetes.io/part-of"], "sluice",
                "{how}: {}",
                o["metadata"]["name"]
            );
        }
    }
}

#[test]
fn microservice_carries_a_native_sidecar() {
    for (how, objs) in renderings("deploy/kubernetes/examples/microservice") {
        check_all(&how, &objs);
        let app = named(&objs, "Deployment", "example-app");
        let spec = &app["spec"]["template"]["spec"];
        let init = spec["initContainers"].as_array().unwrap();
        let sidecar = init
            .iter()
            .find(|c| binary_of(c["image"].as_str().unwrap()) == Some("sluice-sidecar"))
            .expect("sluice-sidecar among the init containers");
        assert_eq!(
            sidecar["restartPolicy"], "Always",
            "{how}: a native sidecar"
        );
        assert!(
            sidecar["startupProbe"].is_object(),
            "{how}: the app starts once the sidecar is ready"
        );
        let env: HashMap<&str, &str> = sidecar["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["name"].as_str().unwrap(), e["value"].as_str().unwrap()))
            .collect();
        assert_eq!(env["SLUICE_SIDECAR_LISTEN"], env["SLUICE_SIDECAR__LISTEN"]);
        let (_, port, _) = host_port(&format!("http://{}", env["SLUICE_SIDECAR__LISTEN"]));
        // The application reaches the provider through localhost, without a key.
        let app_c = &spec["containers"][0];
        let base = app_c["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "OPENAI_BASE_URL")
            .unwrap()["value"]
            .as_str()
            .unwrap();
        let (host, p, path) = host_port(base);
        assert_eq!(
            (host.as_str(), p, path.as_str()),
            ("127.0.0.1", port, "/v1"),
            "{how}"
        );
        assert!(
            app_c["envFrom"].is_null(),
            "{how}: the application holds no provider key"
        );
    }
}

#[test]
fn minimal_renderer_agrees_with_kubectl() {
    for dir in [
        "deploy/kubernetes/base",
        "deploy/kubernetes/examples/microservice",
    ] {
        let r = renderings(dir);
        if r.len() < 2 {
            eprintln!("kubectl not installed: {dir} rendered by the minimal renderer only");
            return;
        }
        assert_eq!(
            normalized(&r[0].1),
            normalized(&r[1].1),
            "{dir}: minimal renderer vs kubectl kustomize"
        );
    }
}

#[test]
fn every_manifest_parses() {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(&repo_root().join("deploy"), &mut files);
    assert!(files.len() >= 10, "{files:?}");
    for f in files {
        let docs = yaml::documents(&std::fs::read_to_string(&f).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(!docs.is_empty(), "{}", f.display());
    }
}
