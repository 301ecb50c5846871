//! Limits of well-known models, used when a model is configured without figures.
//!
//! Figures from Alibaba Cloud Model Studio's rate-limit table (see
//! `shared/reference/providers.md` §4); they differ by region and change. The
//! operator's figures always win: a model with any of `rpm`, `tpm`, `rps`, `tps`,
//! `rpd`, `tpd` or `limits` uses exactly those and no preset.

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
}
