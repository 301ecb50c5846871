//! deploy/kubernetes rendered (by the minimal renderer and by `kubectl kustomize`, which
//! must be installed: the machine image carries it; see [`kubectl`]) and checked:
//! selectors, ports, probes, the ConfigMap loaded by the real config loader with the
//! Secrets' variables, the native sidecar, HPA and PDB, and the hardening: Redis with a
//! password from a Secret that every Sluice container uses, NetworkPolicies (only
//! Sluice's pods reach Redis, only the namespace's pods reach the gateway and sidecar
//! ports), a restricted `securityContext` and requests and limits on every container.

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
    vec![
        (
            "minimal renderer".to_owned(),
            kustomize::render(&path).unwrap(),
        ),
        ("kubectl kustomize".to_owned(), kubectl_kustomize(&path)),
    ]
}

/// The kubectl to render with: `$KUBECTL`, else `kubectl` on the PATH. It must embed
/// kustomize v4 or later (`labels`, directories in `resources`): Debian's own
/// `kubernetes-client` package (kubectl 1.20, kustomize v2.0.3) is too old, which is why
/// scripts/test.sh cannot install it; the machine image carries a current kubectl.
fn kubectl() -> String {
    let kubectl = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".to_owned());
    let fix = "install kubectl >= 1.21 (the Kubernetes project's apt repository, see \
               https://kubernetes.io/docs/tasks/tools/install-kubectl-linux/; Debian's \
               kubernetes-client 1.20 embeds kustomize v2, too old) or set KUBECTL to one";
    let out = Command::new(&kubectl)
        .args(["version", "--client"])
        .output()
        .unwrap_or_else(|e| panic!("`{kubectl}` cannot run ({e}): {fix}"));
    let text = String::from_utf8_lossy(&out.stdout);
    let kustomize = text
        .lines()
        .find_map(|l| l.strip_prefix("Kustomize Version: v"))
        .unwrap_or_else(|| {
            panic!("`{kubectl} version --client` names no kustomize ({text}): {fix}")
        });
    let major: u32 = kustomize
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    assert!(
        major >= 4,
        "`{kubectl}` embeds kustomize v{kustomize}: {fix}"
    );
    kubectl
}

fn kubectl_kustomize(dir: &Path) -> Vec<Value> {
    let out = Command::new(kubectl())
        .arg("kustomize")
        .arg(dir)
        .output()
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    yaml::documents(&String::from_utf8(out.stdout).unwrap()).unwrap()
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

/// The Secret every Sluice container reads with `envFrom`.
const PROVIDER_SECRET: &str = "sluice-provider-keys";

/// The Secrets of deploy/kubernetes/secret.example.yaml: name → key → value.
fn secret_examples() -> HashMap<String, HashMap<String, String>> {
    let docs = yaml::documents(&read("deploy/kubernetes/secret.example.yaml")).unwrap();
    docs.iter()
        .map(|s| {
            assert_eq!(s["kind"], "Secret");
            assert_eq!(s["metadata"]["namespace"], NAMESPACE);
            let data = s["stringData"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect();
            (s["metadata"]["name"].as_str().unwrap().to_owned(), data)
        })
        .collect()
}

/// A container's `env` as the kubelet sets it: `value` (with `$(VAR)` expanded from
/// the variables before it and `base`), `valueFrom.secretKeyRef` from `secrets`.
fn container_env(
    at: &str,
    c: &Value,
    base: &HashMap<String, String>,
    secrets: &HashMap<String, HashMap<String, String>>,
) -> HashMap<String, String> {
    let mut env = base.clone();
    for e in c["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap().to_owned();
        let value = if let Some(r) = e["valueFrom"].get("secretKeyRef") {
            let (secret, key) = (r["name"].as_str().unwrap(), r["key"].as_str().unwrap());
            secrets
                .get(secret)
                .and_then(|s| s.get(key))
                .unwrap_or_else(|| {
                    panic!(
                        "{at}: {name} from Secret {secret} key {key}, not in secret.example.yaml"
                    )
                })
                .clone()
        } else {
            let mut v = e["value"].as_str().unwrap_or_default().to_owned();
            for (k, val) in &env {
                v = v.replace(&format!("$({k})"), val);
            }
            v
        };
        env.insert(name, value);
    }
    env
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
    let secrets = secret_examples();
    let secret_name = PROVIDER_SECRET.to_owned();
    let secret = secrets[PROVIDER_SECRET].clone();
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
            let env = container_env(&format!("{at}/{cname}"), c, &secret, &secrets);
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
            // It authenticates with the password the in-cluster Redis requires.
            let store_deploy = of_kind(objs, "Deployment")
                .find(|d| {
                    labels_match(
                        &svc["spec"]["selector"],
                        &d["spec"]["template"]["metadata"]["labels"],
                    )
                })
                .unwrap_or_else(|| panic!("{at}: Service {host} selects no Deployment"));
            let required = redis_password(how, store_deploy, &secrets);
            assert_eq!(
                url_password(store.redis_url.expose()).as_deref(),
                Some(required.as_str()),
                "{at}/{cname}: the store URL must carry the password of Secret {REDIS_SECRET}"
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

    check_hardening(how, objs);

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

/// The Secret that holds the in-cluster Redis's password.
const REDIS_SECRET: &str = "sluice-redis";

/// The password `:pw@` or `user:pw@` of a URL, if any.
fn url_password(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let (auth, _) = authority.rsplit_once('@')?;
    auth.split_once(':').map(|(_, p)| p.to_owned())
}

/// The `redis-server` container of a Deployment, if it has one.
fn redis_container(d: &Value) -> Option<&Value> {
    pod_containers(d).into_iter().find(|c| {
        kustomize::split_image(c["image"].as_str().unwrap_or_default())
            .0
            .ends_with("redis")
    })
}

/// The whole command line of a container (command, then args).
fn command_line(c: &Value) -> String {
    ["command", "args"]
        .iter()
        .filter_map(|k| c[*k].as_array())
        .flatten()
        .filter_map(Value::as_str)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The password the Redis Deployment `d` requires: `requirepass ${VAR}` in its command
/// line, with VAR from Secret [`REDIS_SECRET`]; panics when it requires none.
fn redis_password(
    how: &str,
    d: &Value,
    secrets: &HashMap<String, HashMap<String, String>>,
) -> String {
    let at = format!("{how}: Deployment {}", d["metadata"]["name"]);
    let c = redis_container(d).unwrap_or_else(|| panic!("{at}: no redis container"));
    let line = command_line(c);
    assert!(
        !line.contains("protected-mode"),
        "{at}: protected mode must not be switched off (a password guards Redis)"
    );
    let var = line
        .split("requirepass ${")
        .nth(1)
        .and_then(|r| r.split('}').next())
        .unwrap_or_else(|| panic!("{at}: redis-server without `requirepass ${{VAR}}`: {line}"));
    let from = c["env"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == var)
        .unwrap_or_else(|| panic!("{at}: {var} is not in the container's env"));
    assert_eq!(
        from["valueFrom"]["secretKeyRef"]["name"], REDIS_SECRET,
        "{at}: {var} must come from Secret {REDIS_SECRET}"
    );
    let env = container_env(&at, c, &HashMap::new(), secrets);
    let password = env[var].clone();
    assert!(!password.is_empty(), "{at}: an empty password");
    password
}

/// True when a NetworkPolicy's `from` entry admits only pods of this namespace (a
/// `podSelector` without `namespaceSelector` or `ipBlock`).
fn same_namespace_pods_only(from: &Value) -> bool {
    from.get("podSelector").is_some()
        && from.get("namespaceSelector").is_none()
        && from.get("ipBlock").is_none()
}

/// The NetworkPolicies that select the pods of Deployment `d` for ingress.
fn ingress_policies<'a>(objs: &'a [Value], d: &Value) -> Vec<&'a Value> {
    let labels = &d["spec"]["template"]["metadata"]["labels"];
    of_kind(objs, "NetworkPolicy")
        .filter(|p| {
            let sel = &p["spec"]["podSelector"]["matchLabels"];
            labels_match(sel, labels)
                && p["spec"]["policyTypes"]
                    .as_array()
                    .is_some_and(|t| t.iter().any(|t| t == "Ingress"))
        })
        .collect()
}

/// The hardening every rendering must have: a restricted `securityContext`, requests
/// and limits on every container; Redis reachable only from Sluice's pods; the
/// gateway's and sidecars' ports only from the namespace's pods.
fn check_hardening(how: &str, objs: &[Value]) {
    for d in of_kind(objs, "Deployment") {
        let at = format!("{how}: Deployment {}", d["metadata"]["name"]);
        for c in pod_containers(d) {
            let at = format!("{at}/{}", c["name"].as_str().unwrap());
            let sc = &c["securityContext"];
            assert_eq!(sc["runAsNonRoot"], true, "{at}: runAsNonRoot");
            assert_eq!(
                sc["readOnlyRootFilesystem"], true,
                "{at}: readOnlyRootFilesystem"
            );
            assert_eq!(
                sc["allowPrivilegeEscalation"], false,
                "{at}: allowPrivilegeEscalation"
            );
            assert!(
                sc["capabilities"]["drop"]
                    .as_array()
                    .is_some_and(|d| d.iter().any(|c| c == "ALL")),
                "{at}: capabilities.drop [ALL]"
            );
            assert!(sc["privileged"] != true, "{at}: privileged");
            for kind in ["requests", "limits"] {
                for r in ["cpu", "memory"] {
                    let v = &c["resources"][kind][r];
                    assert!(v.is_string() || v.is_number(), "{at}: resources.{kind}.{r}");
                }
            }
        }
    }
    // No policy admits everyone: every ingress rule names its sources.
    for p in of_kind(objs, "NetworkPolicy") {
        for rule in p["spec"]["ingress"].as_array().into_iter().flatten() {
            assert!(
                rule["from"].as_array().is_some_and(|f| !f.is_empty()),
                "{how}: NetworkPolicy {} has an ingress rule open to any source",
                p["metadata"]["name"]
            );
        }
    }
    let sluice_pods: Vec<&Value> = of_kind(objs, "Deployment")
        .filter(|d| {
            pod_containers(d)
                .iter()
                .any(|c| binary_of(c["image"].as_str().unwrap_or_default()).is_some())
        })
        .collect();
    for redis in of_kind(objs, "Deployment").filter(|d| redis_container(d).is_some()) {
        let at = format!("{how}: Deployment {}", redis["metadata"]["name"]);
        let policies = ingress_policies(objs, redis);
        assert!(!policies.is_empty(), "{at}: no NetworkPolicy guards Redis");
        let port = redis_container(redis).unwrap()["ports"][0]["containerPort"].clone();
        for p in &policies {
            for rule in p["spec"]["ingress"].as_array().into_iter().flatten() {
                assert!(
                    rule["ports"]
                        .as_array()
                        .is_some_and(|ps| !ps.is_empty() && ps.iter().all(|x| x["port"] == port)),
                    "{at}: {} admits more than the Redis port",
                    p["metadata"]["name"]
                );
                for from in rule["from"].as_array().into_iter().flatten() {
                    assert!(same_namespace_pods_only(from), "{at}: {from} reaches Redis");
                    let sel = &from["podSelector"]["matchLabels"];
                    for d in of_kind(objs, "Deployment") {
                        let admitted =
                            labels_match(sel, &d["spec"]["template"]["metadata"]["labels"]);
                        let sluice = sluice_pods
                            .iter()
                            .any(|s| s["metadata"]["name"] == d["metadata"]["name"]);
                        assert!(
                            !admitted || sluice,
                            "{at}: {} reaches Redis without a Sluice container",
                            d["metadata"]["name"]
                        );
                    }
                }
            }
        }
        for s in &sluice_pods {
            let admitted = policies.iter().any(|p| {
                p["spec"]["ingress"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|rule| {
                        rule["from"].as_array().into_iter().flatten().any(|f| {
                            labels_match(
                                &f["podSelector"]["matchLabels"],
                                &s["spec"]["template"]["metadata"]["labels"],
                            )
                        })
                    })
            });
            assert!(
                admitted,
                "{at}: {} carries Sluice but may not reach Redis",
                s["metadata"]["name"]
            );
        }
    }
    // Every port a Sluice container serves off loopback: only this namespace's pods.
    for d in &sluice_pods {
        let at = format!("{how}: Deployment {}", d["metadata"]["name"]);
        let ports: Vec<&Value> = pod_containers(d)
            .into_iter()
            .filter(|c| binary_of(c["image"].as_str().unwrap_or_default()).is_some())
            .filter_map(|c| c["ports"].as_array())
            .flatten()
            .map(|p| &p["containerPort"])
            .collect();
        if ports.is_empty() {
            continue; // a sidecar on 127.0.0.1: no other pod reaches it at all
        }
        let policies = ingress_policies(objs, d);
        assert!(
            !policies.is_empty(),
            "{at}: no NetworkPolicy guards {ports:?}"
        );
        for p in &policies {
            for rule in p["spec"]["ingress"].as_array().into_iter().flatten() {
                for from in rule["from"].as_array().into_iter().flatten() {
                    assert!(
                        same_namespace_pods_only(from),
                        "{at}: {} admits {from}",
                        p["metadata"]["name"]
                    );
                }
            }
        }
        for port in ports {
            assert!(
                policies.iter().any(
                    |p| p["spec"]["ingress"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|r| r["ports"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|x| &x["port"] == port))
                ),
                "{at}: port {port} is closed to the namespace's apps"
            );
        }
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
                "NetworkPolicy/sluice-gateway",
                "NetworkPolicy/sluice-recalibrator",
                "NetworkPolicy/sluice-redis",
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
            .filter_map(|e| Some((e["name"].as_str().unwrap(), e["value"].as_str()?)))
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
        assert_eq!(r.len(), 2, "{dir}: both renderers");
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
