//! The crate's typed errors: configuration errors and start-up errors.

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed or has an unknown field.
    #[error("invalid config: {0}")]
    Toml(String),
    /// A duration is not numbers followed by units (ms, s, m, h, d, ...).
    #[error("{place}: {text:?} is not a duration like \"60s\", \"1m\" or \"500ms\" ({why})")]
    Duration {
        /// Where.
        place: String,
        /// The text.
        text: String,
        /// What is wrong with it.
        why: sluice_config::DurationError,
    },
    /// A dialect name is not one of openai, dashscope, azure, anthropic.
    #[error("unknown dialect {0:?}: expected openai, dashscope, azure or anthropic")]
    UnknownDialect(String),
    /// A rule names a model that is not served.
    #[error("{place} names model {model:?}, which is not configured")]
    UnknownModel {
        /// Where.
        place: String,
        /// The model.
        model: String,
    },
    /// Any other invalid value, with its path.
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// An error that stops the simulator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Binding or serving failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}
