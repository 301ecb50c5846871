//! Every configuration in `examples/` works as its header documents it (issue #18): with
//! only the environment variables of its `export` lines set, to the values written there
//! (for `examples/sluice.toml`, the README's quick start), the gateway loads it, passes the exposure check,
//! answers `/healthz` and serves one chat completion through `sluice-sim`.
//!
//! The one change to each file is the honest one a test needs: every upstream's
//! `base_url` points at the simulator through `SLUICE_UPSTREAMS__<i>__BASE_URL` (the
//! documented override of the file's value; a variable the file itself documents for its
//! URL, such as `VLLM_BASE_URL`, is set to the simulator too), and `--listen
//! 127.0.0.1:0` takes a free port, as the binary's flag would.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every `NAME=value` of the `export` lines of `text` (shell lines, or `#   export …`
/// in a file's header), less trailing `# comments`: what a user copies.
fn exported(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(|l| l.trim_start_matches('#').trim())
        .filter_map(|l| l.strip_prefix("export "))
        .flat_map(|l| l.split(" #").next().unwrap_or("").split_whitespace())
        .filter_map(|w| w.split_once('=').map(|(n, v)| (n.to_owned(), v.to_owned())))
        .collect()
}

/// The README's quick-start block that runs `examples/sluice.toml`.
fn readme_quick_start() -> String {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    readme
        .split("```")
        .find(|block| block.contains("--config examples/sluice.toml"))
        .expect("README.md has a code block running `--config examples/sluice.toml`")
        .to_owned()
}

/// The example files, sorted.
fn examples() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("examples"))
        .expect("examples/")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn the_readme_documents_a_file_for_every_provider_and_runs_the_quick_start_verbatim() {
    let names: Vec<String> = examples()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in [
        "sluice.toml",
        "openai.toml",
        "azure.toml",
        "anthropic.toml",
        "vllm.toml",
        "multi-team.toml",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "examples/{want} is missing: {names:?}"
        );
    }
    let block = readme_quick_start();
    let file = std::fs::read_to_string(root().join("examples/sluice.toml")).unwrap();
    assert_eq!(
        exported(&block),
        exported(&file),
        "the README's quick start exports what examples/sluice.toml documents"
    );
    assert!(
        block.contains("cargo build --release -p sluice-gateway")
            && block.contains("target/release/sluice-gateway --config examples/sluice.toml"),
        "the README builds and runs the release binary: {block}"
    );
}

#[test]
fn each_example_says_how_its_provider_meters_and_runs_its_own_command() {
    for path in examples() {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains(&format!(
                "target/release/sluice-gateway --config examples/{name}"
            )),
            "examples/{name}: its header runs it with the release binary"
        );
        assert!(
            !exported(&text).is_empty(),
            "examples/{name}: its header exports the variables it needs"
        );
        assert!(
            text.contains("NOT per key")
                && ["OpenAI", "Anthropic", "Azure"]
                    .iter()
                    .all(|p| text.contains(p)),
            "examples/{name}: says plainly that OpenAI, Anthropic and Azure meter per organisation/project/deployment, NOT per key"
        );
    }
}

/// The simulator, serving every upstream model of `config` in its upstream's dialect,
/// with no limits, any key.
async fn sim_for(config: &sluice_config::Config) -> sluice_sim::SimHandle {
    use sluice_config::Dialect as D;
    use sluice_sim::Dialect as S;
    let models = config
        .models
        .iter()
        .map(|m| {
            let dialect = match config.upstreams[m.upstream_index].dialect {
                D::Dashscope => S::Dashscope,
                D::Azure => S::Azure,
                D::Anthropic => S::Anthropic,
                D::Openai => S::Openai,
            };
            sluice_sim::ModelConfig::new(m.upstream_model.clone(), dialect)
        })
        .collect();
    let mut sim = sluice_sim::Config::with_models(models);
    sim.accept_any_key = true;
    sluice_sim::spawn(sim).await.expect("the simulator starts")
}

/// The documented environment of `path`, values as written: the README's quick start
/// for `sluice.toml`, the file's own `export` lines for the others.
fn documented_env(path: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(path).unwrap();
    if path.ends_with("sluice.toml") {
        exported(&readme_quick_start())
    } else {
        exported(&text)
    }
}

/// The bearer token a client of `path` sends: the first tenant's key (from its
/// `${VAR}`), or the README's `unused-without-tenants` when the file has no tenants.
fn client_key(path: &Path, env: &HashMap<String, String>) -> String {
    let table: toml::Table = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let Some(tenants) = table.get("tenants").and_then(|t| t.as_array()) else {
        return "unused-without-tenants".to_owned();
    };
    let key = tenants[0]["key"]
        .as_str()
        .expect("the first tenant has a key = \"${VAR}\"");
    let var = key
        .strip_prefix("${")
        .and_then(|k| k.strip_suffix('}'))
        .expect("the first tenant's key is one ${VAR}");
    env.get(var)
        .unwrap_or_else(|| panic!("{var} is documented in the file's export line"))
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_starts_with_its_documented_variables_and_serves_through_the_simulator() {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    for path in examples() {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let upstreams = toml::from_str::<toml::Table>(&text).unwrap()["upstreams"]
            .as_array()
            .unwrap()
            .len();
        // First load exactly as documented (the values as written: the gateway must start
        // with them), to know the models the simulator must serve.
        let mut env: HashMap<String, String> = documented_env(&path).into_iter().collect();
        let config = sluice_config::load(&path, &[], &env).unwrap_or_else(|e| {
            panic!("examples/{name} loads with only its documented variables set: {e}")
        });
        config.check_exposure().unwrap_or_else(|e| {
            panic!("examples/{name} passes the exposure check on its own listen address: {e}")
        });
        let flags = [("server.listen".to_owned(), "127.0.0.1:0".to_owned())];
        let sim = sim_for(&config).await;
        for value in env.iter_mut().filter(|(k, _)| k.ends_with("_BASE_URL")) {
            *value.1 = sim.base_url();
        }
        for i in 0..upstreams {
            env.insert(format!("SLUICE_UPSTREAMS__{i}__BASE_URL"), sim.base_url());
        }
        let config = sluice_config::load(&path, &flags, &env)
            .unwrap_or_else(|e| panic!("examples/{name} loads with its base_url swapped: {e}"));
        let model = config.models[0].name.clone();
        let listener = tokio::net::TcpListener::bind(config.server.listen)
            .await
            .unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let gateway = sluice_proxy::Gateway::new(config)
            .unwrap_or_else(|e| panic!("examples/{name}: the gateway starts: {e}"));
        let server = tokio::spawn(sluice_proxy::serve(
            gateway,
            listener,
            std::future::pending(),
        ));

        let health = client.get(format!("{base}/healthz")).send().await.unwrap();
        assert_eq!(health.status(), 200, "examples/{name}: /healthz");

        let answer = client
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(client_key(&path, &env))
            .json(&serde_json::json!({
                "model": model,
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 16,
            }))
            .send()
            .await
            .unwrap();
        let status = answer.status();
        let body: serde_json::Value = answer.json().await.unwrap_or_default();
        assert_eq!(
            status, 200,
            "examples/{name}: a chat completion of {model}: {body}"
        );
        assert!(
            body["choices"][0]["message"]["content"].is_string(),
            "examples/{name}: an answer with content: {body}"
        );
        let served: u64 = sim
            .sim()
            .stats()
            .accounts
            .values()
            .flat_map(|a| a.models.values())
            .map(|m| m.accepted)
            .sum();
        assert_eq!(
            served, 1,
            "examples/{name}: the simulator served the request"
        );
        server.abort();
    }
}
