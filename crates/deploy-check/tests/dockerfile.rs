//! The Dockerfile: base images as build arguments, stage order, users, ports, healthchecks.

use sluice_deploy_check::dockerfile::Dockerfile;
use sluice_deploy_check::read;

use crate::common::{host_port, served_paths};

const IMAGES: [(&str, &str, u16); 3] = [
    ("gateway", "sluice-gateway", 8080),
    ("sidecar", "sluice-sidecar", 8081),
    ("sim", "sluice-sim", 9000),
];

fn dockerfile() -> Dockerfile {
    Dockerfile::parse(&read("Dockerfile"))
}

#[test]
fn base_images_are_arguments_with_official_defaults() {
    let df = dockerfile();
    let arg = |n: &str| {
        df.global_args
            .iter()
            .find(|(name, _)| name == n)
            .and_then(|(_, d)| d.clone())
            .unwrap_or_else(|| panic!("ARG {n} with a default"))
    };
    assert!(arg("RUST_IMAGE").starts_with("rust:"));
    assert!(arg("RUNTIME_IMAGE").starts_with("debian:") && arg("RUNTIME_IMAGE").ends_with("-slim"));
    assert_eq!(df.stage("runtime").unwrap().from, "${RUNTIME_IMAGE}");
    assert_eq!(df.stage("builder").unwrap().from, "${RUST_IMAGE}");
}

#[test]
fn prebuilt_stages_come_before_the_builder() {
    // The classic builder builds every stage up to its target: a *-prebuilt target must
    // never need ${RUST_IMAGE}, which cannot be pulled without a registry.
    let df = dockerfile();
    let builder = df.position("builder").unwrap();
    for (name, _, _) in IMAGES {
        let pre = df
            .position(&format!("{name}-prebuilt"))
            .expect("a prebuilt stage");
        assert!(pre < builder, "{name}-prebuilt after the builder");
        assert!(df.position(name).unwrap() > builder);
    }
    // The sidecar may not exist yet: its prebuilt stage is the last of them, so building
    // the others never needs its binary.
    assert_eq!(df.position("sidecar-prebuilt").unwrap() + 1, builder);
    assert_eq!(
        df.stages.last().unwrap().name,
        "gateway",
        "`docker build .` gives the gateway"
    );
}

#[test]
fn every_image_runs_its_binary_as_a_user_with_a_healthcheck() {
    let df = dockerfile();
    for (name, binary, port) in IMAGES {
        for stage in [name.to_owned(), format!("{name}-prebuilt")] {
            let s = df.stage(&stage).unwrap();
            assert_eq!(s.from, "runtime", "{stage}");
            let copy = s.all("COPY").join(" ");
            assert!(
                copy.ends_with(&format!("/usr/local/bin/{binary}")),
                "{stage}: {copy}"
            );
            let entry = df.effective(&stage, "ENTRYPOINT");
            assert_eq!(entry.last().unwrap(), &format!("[\"{binary}\"]"), "{stage}");
            let user = df.effective(&stage, "USER");
            let user = user.last().expect("a USER");
            assert!(
                !user.starts_with('0') && user != "root",
                "{stage} runs as {user}"
            );
            assert_eq!(
                df.effective(&stage, "EXPOSE").last().unwrap(),
                &port.to_string()
            );
            let hc = df.effective(&stage, "HEALTHCHECK");
            let hc = hc.last().expect("a HEALTHCHECK");
            let url = hc
                .split_whitespace()
                .find(|w| w.starts_with("http://"))
                .unwrap();
            let (host, hc_port, path) = host_port(url);
            assert_eq!(
                (host.as_str(), hc_port),
                ("127.0.0.1", port),
                "{stage}: {url}"
            );
            assert!(
                served_paths(binary).contains(&path.as_str()),
                "{stage}: {binary} does not serve {path}"
            );
        }
    }
}

#[test]
fn images_listen_where_they_expose() {
    let df = dockerfile();
    for stage in ["gateway", "gateway-prebuilt"] {
        let env = df.effective(stage, "ENV").join(" ");
        assert!(
            env.contains("SLUICE_SERVER__LISTEN=0.0.0.0:8080"),
            "{stage}"
        );
        assert!(env.contains("SLUICE_CONFIG=/etc/sluice/sluice.toml"));
    }
    for stage in ["sidecar", "sidecar-prebuilt"] {
        let env = df.effective(stage, "ENV").join(" ");
        assert!(
            env.contains("SLUICE_SIDECAR_LISTEN=0.0.0.0:8081"),
            "{stage}"
        );
        assert!(
            env.contains("SLUICE_SIDECAR__LISTEN=0.0.0.0:8081"),
            "{stage}"
        );
    }
}

#[test]
fn dockerignore_keeps_build_outputs_out_of_the_context() {
    let ignore = read(".dockerignore");
    for p in ["/target", "/target-*", "/.git"] {
        assert!(
            ignore.lines().any(|l| l.trim() == p),
            ".dockerignore lacks {p}"
        );
    }
}
