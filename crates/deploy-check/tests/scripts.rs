//! The scripts: syntax, and the CI step that runs the compose end-to-end test.

use std::process::Command;

use sluice_deploy_check::{read, repo_root};

#[test]
fn scripts_are_valid_bash() {
    for s in [
        "scripts/build-images.sh",
        "scripts/compose-e2e.sh",
        ".ci/run",
    ] {
        let out = Command::new("bash")
            .arg("-n")
            .arg(repo_root().join(s))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{s}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn ci_runs_the_compose_e2e_after_the_tests_when_docker_is_there() {
    let ci = read(".ci/run");
    let tests = ci.find("bash scripts/test.sh").expect("the test step");
    let e2e = ci
        .find("bash scripts/compose-e2e.sh")
        .expect("the compose e2e step");
    assert!(e2e > tests);
    assert!(ci.contains("docker info"));
    assert!(ci.contains("compose e2e: skipped (no Docker engine)"));
}

#[test]
fn e2e_traffic_script_compiles() {
    let script = repo_root().join("deploy/compose/e2e_traffic.py");
    // Parsed, not byte-compiled: no __pycache__ is left in the tree.
    let check = "import ast, sys; ast.parse(open(sys.argv[1]).read(), sys.argv[1])";
    match Command::new("python3")
        .arg("-c")
        .arg(check)
        .arg(&script)
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(_) => eprintln!("python3 not installed: e2e_traffic.py not compiled"),
    }
}
