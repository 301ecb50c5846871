//! [`ConfigError`]: why a configuration was refused, naming the key, the value and what was expected.

use std::path::PathBuf;

/// A configuration that cannot be used. Every variant names where the problem is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("invalid TOML: {0}")]
    Syntax(String),
    /// A key has a value of the wrong shape (or is unknown, or missing).
    #[error("{path}: {message}")]
    Schema {
        /// The key path, e.g. `models[1].limits[0].per`.
        path: String,
        /// What is wrong, with the value and what was expected.
        message: String,
    },
    /// A `${VAR}` names a variable that is not set (and has no `:-default`).
    #[error(
        "{path}: environment variable {var} is not set (write ${{{var}:-default}} for a default)"
    )]
    MissingEnv {
        /// The key path.
        path: String,
        /// The variable.
        var: String,
    },
    /// A `${file:/path}` names a secret file that cannot be used.
    #[error("{path}: cannot read the secret file {file}: {error}")]
    SecretFile {
        /// The key path.
        path: String,
        /// The file.
        file: String,
        /// Why (never the content).
        error: String,
    },
    /// A flag or `SLUICE_*` override cannot be applied.
    #[error("override {origin}: {message}")]
    Override {
        /// The flag or variable.
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// A value is well-formed but not acceptable.
    #[error("{path}: {value} is not valid: expected {expected}")]
    Invalid {
        /// The key path.
        path: String,
        /// The value as written (never a secret).
        value: String,
        /// What is accepted.
        expected: String,
    },
    /// A model names an upstream that is not defined.
    #[error(
        "models[{index}].upstream: model {model:?} names upstream {upstream:?}, but the [[upstreams]] are {known:?}"
    )]
    UnknownUpstream {
        /// Index of the model.
        index: usize,
        /// The model.
        model: String,
        /// The upstream it names.
        upstream: String,
        /// The upstreams that exist.
        known: Vec<String>,
    },
    /// A fallback names a model that is not defined.
    #[error(
        "models[{index}].fallback: model {model:?} falls back to {fallback:?}, which is not a configured model"
    )]
    UnknownFallback {
        /// Index of the model.
        index: usize,
        /// The model.
        model: String,
        /// The unknown fallback.
        fallback: String,
    },
    /// Two entries share a name (or two tenants a key).
    #[error("{path}: duplicate {what} {name:?}")]
    Duplicate {
        /// The key path of the second entry.
        path: String,
        /// What is duplicated.
        what: &'static str,
        /// The name (never a key).
        name: String,
    },
    /// A model has no limits and no preset.
    #[error(
        "models[{index}]: model {model:?} has no limits and no preset: set rpm / tpm / rps or limits = [...]"
    )]
    NoLimits {
        /// Index of the model.
        index: usize,
        /// The model.
        model: String,
    },
    /// The gateway would listen beyond this machine with no tenant keys.
    #[error(
        "server.listen: {listen} is not a loopback address and no [[tenants]] are configured, so anyone who can reach it could spend the provider quota; add [[tenants]] with keys, listen on 127.0.0.1, or set server.insecure_allow_unauthenticated = true"
    )]
    Unauthenticated {
        /// The configured address.
        listen: String,
    },
    /// The sidecar would listen beyond this machine with no tenant keys.
    #[error(
        "sidecar.listen: {listen} is not a loopback address and no [[tenants]] are configured, so anyone who can reach it could acquire the whole capacity, refund usage or report accounts dead; add [[tenants]] with keys, listen on 127.0.0.1, or set sidecar.insecure_allow_unauthenticated = true"
    )]
    SidecarUnauthenticated {
        /// The configured address.
        listen: String,
    },
    /// An admin listener off loopback without the admin key.
    #[error(
        "{path}: {listen} is not a loopback address and no sidecar.admin_key is configured, so anyone who can reach it could read metrics (tenants, spend, account headroom) and use the admin endpoints; set sidecar.admin_key (or admin_key_sha256), or listen on 127.0.0.1"
    )]
    AdminUnauthenticated {
        /// `server.admin_listen` or `sidecar.admin_listen`.
        path: &'static str,
        /// The configured address.
        listen: String,
    },
}
