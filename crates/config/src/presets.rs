//! Limits and prices of well-known models, used when a model is configured without
//! figures.
//!
//! Figures from Alibaba Cloud Model Studio's rate-limit table (see
//! `shared/reference/providers.md` §4); they differ by region and change. The
//! operator's figures always win: a model with any of `rpm`, `tpm`, `rps`, `tps`,
//! `rpd`, `tpd` or `limits` uses exactly those and no preset.

use crate::Price;

/// A model's published limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Preset {
    /// The model name.
    pub model: &'static str,
    /// Requests per minute.
    pub rpm: u64,
    /// Tokens (input + output) per minute.
    pub tpm: u64,
    /// Requests per second (DashScope: RPM / 60).
    pub rps: u64,
}

/// Every preset.
pub const PRESETS: &[Preset] = &[
    Preset {
        model: "qwen3-max",
        rpm: 600,
        tpm: 1_000_000,
        rps: 10,
    },
    Preset {
        model: "qwen3-max-2025-09-23",
        rpm: 60,
        tpm: 100_000,
        rps: 1,
    },
    Preset {
        model: "qwen-max",
        rpm: 600,
        tpm: 1_000_000,
        rps: 10,
    },
    Preset {
        model: "qwen-plus",
        rpm: 600,
        tpm: 1_000_000,
        rps: 10,
    },
    Preset {
        model: "qwen-turbo",
        rpm: 600,
        tpm: 5_000_000,
        rps: 10,
    },
];

/// The preset for `model`, if one is known. Dated DashScope snapshots
/// (`qwen-plus-2025-01-25`) get the snapshot figures: 60 RPM, 100,000 TPM, 1 RPS.
pub fn preset(model: &str) -> Option<Preset> {
    if let Some(p) = PRESETS.iter().find(|p| p.model == model) {
        return Some(*p);
    }
    let dated = model.len() > 11
        && model.as_bytes()[model.len() - 11] == b'-'
        && model[model.len() - 10..].bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    let family = ["qwen-max", "qwen-plus", "qwen-turbo", "qwen3-max"];
    if dated && family.iter().any(|f| model.starts_with(f)) {
        return Some(Preset {
            model: "qwen (dated snapshot)",
            rpm: 60,
            tpm: 100_000,
            rps: 1,
        });
    }
    None
}

/// Published list prices (USD per million tokens: input, cached input, output) of the
/// models the examples use, for tenant budgets when a model has no `price`:
/// - OpenAI: openai.com/api/pricing (standard tier);
/// - Anthropic: docs.anthropic.com, "Pricing" (base input, cache hits, output);
/// - Alibaba Model Studio: alibabacloud.com/help/en/model-studio/model-pricing
///   (International deployment, the first input-length tier; implicit cache hits at
///   20% of input).
///
/// They change and differ by region and tier: the operator's `price` always wins.
/// Dated snapshots (`gpt-4o-2024-08-06`, `qwen-plus-2025-01-25`) take their family's.
pub const PRICES: &[(&str, Price)] = &[
    ("gpt-4o", usd(2.50, 1.25, 10.00)),
    ("gpt-4o-mini", usd(0.15, 0.075, 0.60)),
    ("gpt-4.1", usd(2.00, 0.50, 8.00)),
    ("gpt-4.1-mini", usd(0.40, 0.10, 1.60)),
    ("claude-sonnet-4", usd(3.00, 0.30, 15.00)),
    ("claude-opus-4", usd(15.00, 1.50, 75.00)),
    ("qwen3-max", usd(1.20, 0.24, 6.00)),
    ("qwen-max", usd(1.60, 0.32, 6.40)),
    ("qwen-plus", usd(0.40, 0.08, 1.20)),
    ("qwen-turbo", usd(0.05, 0.01, 0.20)),
];

const fn usd(input: f64, cached: f64, output: f64) -> Price {
    Price {
        input_per_mtok: input,
        cached_input_per_mtok: cached,
        output_per_mtok: output,
    }
}

/// The list price of `model` (see [`PRICES`]): its own entry, else that of the longest
/// family it extends by `-<version or date>` (`claude-sonnet-4-5` is priced as
/// `claude-sonnet-4`; `gpt-4o-mini` is its own, not `gpt-4o`'s).
pub fn price(model: &str) -> Option<Price> {
    PRICES
        .iter()
        .filter(|(family, _)| {
            model == *family
                || model
                    .strip_prefix(family)
                    .and_then(|rest| rest.strip_prefix('-'))
                    .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        })
        .max_by_key(|(family, _)| family.len())
        .map(|(_, p)| *p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_and_dated_models() {
        assert_eq!(preset("qwen3-max").unwrap().rpm, 600);
        assert_eq!(preset("qwen-turbo").unwrap().tpm, 5_000_000);
        assert_eq!(preset("qwen-plus-2025-01-25").unwrap().rpm, 60);
        assert_eq!(preset("qwen3-max-2025-09-23").unwrap().rps, 1);
        assert!(preset("gpt-4o").is_none());
        assert!(preset("qwen-plus-latest").is_none());
    }

    #[test]
    fn prices_of_families_and_snapshots() {
        assert_eq!(price("gpt-4o").unwrap().output_per_mtok, 10.0);
        assert_eq!(price("gpt-4o-mini").unwrap().output_per_mtok, 0.60);
        assert_eq!(price("gpt-4o-2024-08-06").unwrap().input_per_mtok, 2.50);
        assert_eq!(price("claude-sonnet-4-5").unwrap().input_per_mtok, 3.0);
        assert_eq!(price("qwen-plus-2025-01-25").unwrap().output_per_mtok, 1.20);
        assert!(price("gpt-4o-audio-preview").is_none());
        assert!(price("my-local-llama").is_none());
    }
}
