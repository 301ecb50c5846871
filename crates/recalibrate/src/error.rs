//! [`CatalogError`]: a configuration whose models do not make quotas.

/// Why the configuration cannot be turned into quotas.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    /// A model's limits do not make a quota, or a name does not make a quota key.
    #[error("model {model}: {source}")]
    Quota {
        /// The model.
        model: String,
        /// Why.
        source: sluice_limiter::QuotaError,
    },
}
