//! A minimal Kustomize renderer, enough for `deploy/kubernetes`: `resources` (files and
//! directories with a kustomization), `namespace`, `labels` (`includeSelectors: false`,
//! `includeTemplates`), `configMapGenerator` (`files`) and `images`. Any other field is
//! an error, so a manifest never relies on a feature this renderer silently skips.
//!
//! Unlike `kubectl kustomize`, generated ConfigMaps keep their plain name (no content
//! hash); the tests compare the two renderings modulo that suffix.

use std::path::Path;

use serde_json::{Map, Value, json};

use crate::yaml;

/// Kinds that live outside namespaces (the ones these manifests could use).
const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PriorityClass",
    "StorageClass",
];

/// Kinds whose `spec.template` is a pod template.
const WORKLOADS: &[&str] = &[
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "ReplicaSet",
    "Job",
];

const KNOWN_FIELDS: &[&str] = &[
    "apiVersion",
    "kind",
    "namespace",
    "labels",
    "resources",
    "configMapGenerator",
    "images",
];

/// Renders the kustomization in `dir` into its objects, in order.
pub fn render(dir: &Path) -> Result<Vec<Value>, String> {
    let file = ["kustomization.yaml", "kustomization.yml"]
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.exists())
        .ok_or_else(|| format!("{}: no kustomization.yaml", dir.display()))?;
    let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    let k = yaml::document(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    let fields = k.as_object().ok_or("a kustomization is a mapping")?;
    if let Some(unknown) = fields.keys().find(|f| !KNOWN_FIELDS.contains(&f.as_str())) {
        return Err(format!(
            "{}: `{unknown}` is not supported by this renderer",
            file.display()
        ));
    }

    let mut objects = Vec::new();
    for r in list(&k, "resources") {
        let r = r.as_str().ok_or("resources are paths")?;
        let path = dir.join(r);
        if path.is_dir() {
            objects.extend(render(&path)?);
        } else {
            let text =
                std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            objects.extend(yaml::documents(&text).map_err(|e| format!("{}: {e}", path.display()))?);
        }
    }
    for g in list(&k, "configMapGenerator") {
        objects.push(config_map(dir, g)?);
    }
    if let Some(ns) = k.get("namespace").and_then(Value::as_str) {
        for o in &mut objects {
            let kind = o["kind"].as_str().unwrap_or_default();
            if !CLUSTER_SCOPED.contains(&kind) {
                o["metadata"]["namespace"] = json!(ns);
            }
        }
    }
    for l in list(&k, "labels") {
        if l.get("includeSelectors").and_then(Value::as_bool) == Some(true) {
            return Err("labels.includeSelectors: true is not supported".into());
        }
        let templates = l.get("includeTemplates").and_then(Value::as_bool) == Some(true);
        let pairs = l["pairs"]
            .as_object()
            .ok_or("labels[].pairs is a mapping")?;
        for o in &mut objects {
            add_labels(&mut o["metadata"], pairs);
            let kind = o["kind"].as_str().unwrap_or_default();
            if templates && WORKLOADS.contains(&kind) {
                add_labels(&mut o["spec"]["template"]["metadata"], pairs);
            }
        }
    }
    for image in list(&k, "images") {
        for o in &mut objects {
            set_image(o, image);
        }
    }
    Ok(objects)
}

fn list<'a>(v: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    v.get(key).and_then(Value::as_array).into_iter().flatten()
}

fn config_map(dir: &Path, g: &Value) -> Result<Value, String> {
    let name = g["name"].as_str().ok_or("configMapGenerator[].name")?;
    if let Some(other) = g
        .as_object()
        .and_then(|m| m.keys().find(|k| !["name", "files"].contains(&k.as_str())))
    {
        return Err(format!(
            "configMapGenerator `{name}`: `{other}` is not supported"
        ));
    }
    let mut data = Map::new();
    for f in list(g, "files") {
        let f = f.as_str().ok_or("configMapGenerator[].files are paths")?;
        let (key, path) = f.split_once('=').unwrap_or_else(|| {
            let base = f.rsplit('/').next().unwrap_or(f);
            (base, f)
        });
        let text = std::fs::read_to_string(dir.join(path))
            .map_err(|e| format!("{}: {e}", dir.join(path).display()))?;
        data.insert(key.to_owned(), json!(text));
    }
    Ok(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}))
}

fn add_labels(metadata: &mut Value, pairs: &Map<String, Value>) {
    if !metadata["labels"].is_object() {
        metadata["labels"] = json!({});
    }
    for (k, v) in pairs {
        metadata["labels"][k] = v.clone();
    }
}

fn set_image(o: &mut Value, image: &Value) {
    let Some(name) = image["name"].as_str() else {
        return;
    };
    let Some(spec) = o.pointer_mut("/spec/template/spec") else {
        return;
    };
    for list in ["containers", "initContainers"] {
        let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for c in containers {
            let current = c["image"].as_str().unwrap_or_default();
            let (base, tag) = split_image(current);
            if base != name {
                continue;
            }
            let new_base = image["newName"].as_str().unwrap_or(base);
            let new_tag = image["newTag"].as_str().or(tag);
            c["image"] = json!(match new_tag {
                Some(t) => format!("{new_base}:{t}"),
                None => new_base.to_owned(),
            });
        }
    }
}

/// `repo/name:tag` → (`repo/name`, `Some("tag")`); a registry port is not a tag.
pub fn split_image(image: &str) -> (&str, Option<&str>) {
    match image.rsplit_once(':') {
        Some((base, tag)) if !tag.contains('/') => (base, Some(tag)),
        _ => (image, None),
    }
}
