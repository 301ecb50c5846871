//! Reservation tickets: what `POST /v1/acquire` hands an app and `POST /v1/report`
//! takes back, signed so that a report can only reconcile a reservation the fleet
//! issued, for the tenant it was issued to, with the amounts it reserved.
//!
//! The signature is HMAC-SHA256 over every field of the ticket (a versioned,
//! length-prefixed encoding, so no two tickets encode alike), with `[sidecar]
//! ticket_key`, or a random key drawn at start when none is configured (then a ticket
//! is valid only at the sidecar that issued it). Verification is constant time.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// A reservation as the app holds it between acquire and report.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Ticket {
    pub(crate) id: String,
    /// The tenant it was issued to (`default` without `[[tenants]]`).
    pub(crate) tenant: String,
    /// The configured model name.
    pub(crate) model: String,
    pub(crate) account: String,
    pub(crate) slot_us: u64,
    pub(crate) requests: u64,
    pub(crate) input_tokens: u64,
    pub(crate) output_tokens: u64,
    pub(crate) origin: String,
    /// What the tenant's own limits were charged, when it has any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) tenant_charge: Option<TenantTicket>,
    /// HMAC-SHA256 of every other field, hex.
    #[serde(default)]
    pub(crate) sig: String,
}

/// A charge of the tenant's own limits, as the ticket carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TenantTicket {
    pub(crate) id: String,
    pub(crate) slot_us: u64,
    pub(crate) requests: u64,
    pub(crate) input_tokens: u64,
    pub(crate) output_tokens: u64,
    /// Micro-USD.
    pub(crate) spend: u64,
    pub(crate) local: bool,
}

impl TenantTicket {
    pub(crate) fn of(c: &sluice_proxy::TenantCharge) -> Self {
        Self {
            id: format!("{:016x}", c.id),
            slot_us: c.slot_us,
            requests: c.cost.requests,
            input_tokens: c.cost.input_tokens,
            output_tokens: c.cost.output_tokens,
            spend: c.cost.spend,
            local: c.local,
        }
    }

    /// The charge, or `None` when its id is not one a sidecar writes.
    pub(crate) fn charge(&self) -> Option<sluice_proxy::TenantCharge> {
        Some(sluice_proxy::TenantCharge {
            id: u64::from_str_radix(&self.id, 16).ok()?,
            slot_us: self.slot_us,
            cost: sluice_limiter::Cost {
                requests: self.requests,
                input_tokens: self.input_tokens,
                output_tokens: self.output_tokens,
                spend: self.spend,
            },
            local: self.local,
        })
    }
}

impl Ticket {
    /// The bytes the signature covers: every field but `sig`, each length-prefixed.
    fn signed_bytes(&self) -> Vec<u8> {
        let mut out = b"sluice-ticket-v1".to_vec();
        let mut put = |field: &[u8]| {
            out.extend_from_slice(&(field.len() as u64).to_be_bytes());
            out.extend_from_slice(field);
        };
        put(self.id.as_bytes());
        put(self.tenant.as_bytes());
        put(self.model.as_bytes());
        put(self.account.as_bytes());
        put(&self.slot_us.to_be_bytes());
        put(&self.requests.to_be_bytes());
        put(&self.input_tokens.to_be_bytes());
        put(&self.output_tokens.to_be_bytes());
        put(self.origin.as_bytes());
        // A ticket without a tenant charge encodes as before.
        if let Some(t) = &self.tenant_charge {
            put(b"tenant-charge");
            put(t.id.as_bytes());
            for n in [
                t.slot_us,
                t.requests,
                t.input_tokens,
                t.output_tokens,
                t.spend,
            ] {
                put(&n.to_be_bytes());
            }
            put(&[u8::from(t.local)]);
        }
        out
    }
}

/// Signs and verifies tickets with one key. Its `Debug` never shows the key.
pub(crate) struct TicketSigner {
    key: Vec<u8>,
    /// True when the key was drawn at start (no `ticket_key` configured).
    pub(crate) ephemeral: bool,
}

impl std::fmt::Debug for TicketSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TicketSigner(*****)")
    }
}

impl TicketSigner {
    /// Signs with `key`, or with 32 random bytes when `None`.
    pub(crate) fn new(key: Option<&str>) -> Self {
        match key {
            Some(k) => Self {
                key: k.as_bytes().to_vec(),
                ephemeral: false,
            },
            None => Self {
                key: rand::random::<[u8; 32]>().to_vec(),
                ephemeral: true,
            },
        }
    }

    fn mac(&self, t: &Ticket) -> HmacSha256 {
        // An HMAC takes a key of any length: this cannot fail.
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC accepts any key length");
        mac.update(&t.signed_bytes());
        mac
    }

    /// Sets `t.sig`.
    pub(crate) fn sign(&self, t: &mut Ticket) {
        let tag = self.mac(t).finalize().into_bytes();
        t.sig = tag.iter().map(|b| format!("{b:02x}")).collect();
    }

    /// True when `t.sig` is this key's signature of `t` (constant time).
    pub(crate) fn verify(&self, t: &Ticket) -> bool {
        let Some(tag) = from_hex(&t.sig) else {
            return false;
        };
        self.mac(t).verify_slice(&tag).is_ok()
    }
}

fn from_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket() -> Ticket {
        Ticket {
            id: "00ff".into(),
            tenant: "team-a".into(),
            model: "m".into(),
            account: "key-0".into(),
            slot_us: 7,
            requests: 1,
            input_tokens: 100,
            output_tokens: 50,
            origin: "shared".into(),
            tenant_charge: Some(TenantTicket {
                id: "00aa".into(),
                slot_us: 7,
                requests: 1,
                input_tokens: 100,
                output_tokens: 50,
                spend: 1_000,
                local: false,
            }),
            sig: String::new(),
        }
    }

    #[test]
    fn a_signed_ticket_verifies_and_every_field_is_covered() {
        let signer = TicketSigner::new(Some("k".repeat(32).as_str()));
        let mut t = ticket();
        signer.sign(&mut t);
        assert!(signer.verify(&t));
        type Tamper = Box<dyn Fn(&mut Ticket)>;
        let tampered: Vec<Tamper> = vec![
            Box::new(|t| t.id.push('0')),
            Box::new(|t| t.tenant = "team-b".into()),
            Box::new(|t| t.model = "n".into()),
            Box::new(|t| t.account = "key-1".into()),
            Box::new(|t| t.slot_us += 1),
            Box::new(|t| t.requests += 1),
            Box::new(|t| t.input_tokens += 1),
            Box::new(|t| t.output_tokens += 1),
            Box::new(|t| t.origin = "local".into()),
            Box::new(|t| t.tenant_charge = None),
            Box::new(|t| t.tenant_charge.as_mut().unwrap().id.push('0')),
            Box::new(|t| t.tenant_charge.as_mut().unwrap().slot_us += 1),
            Box::new(|t| t.tenant_charge.as_mut().unwrap().requests += 1),
            Box::new(|t| t.tenant_charge.as_mut().unwrap().input_tokens += 1),
            Box::new(|t| t.tenant_charge.as_mut().unwrap().output_tokens += 1),
            Box::new(|t| t.tenant_charge.as_mut().unwrap().spend -= 1),
            Box::new(|t| t.tenant_charge.as_mut().unwrap().local = true),
            Box::new(|t| t.sig = "00".repeat(32)),
            Box::new(|t| t.sig.clear()),
        ];
        for (i, change) in tampered.iter().enumerate() {
            let mut bad = t.clone();
            change(&mut bad);
            assert!(!signer.verify(&bad), "change {i} still verified");
        }
        let other = TicketSigner::new(Some("j".repeat(32).as_str()));
        assert!(!other.verify(&t));
        assert!(!TicketSigner::new(None).verify(&t));
        assert_eq!(format!("{signer:?}"), "TicketSigner(*****)");
    }
}
