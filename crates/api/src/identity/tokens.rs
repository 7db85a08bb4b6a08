//! Stateless tokens: compact claims signed with HMAC-SHA256 under a signing key that
//! every replica reads from the store. A token is `<kid>.<claims>.<mac>`: the key id
//! in clear (so that a rotated-out key still verifies the tokens it signed), the
//! claims as base64url JSON, and the MAC over `<kid>.<claims>`. Tokens of the first
//! format, `<claims>.<mac>` under the store's original secret, still verify with that
//! secret, which became a key flagged `legacy`. Revocation is a store record.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The longest chain of tokens got from tokens (each ancestor's audit id is carried so
/// that revoking any of them revokes this one). Past it, authenticate again.
pub const MAX_CHAIN: usize = 16;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenClaims {
    #[serde(rename = "u")]
    pub user: String,
    #[serde(rename = "p", default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(rename = "i")]
    pub issued: i64,
    #[serde(rename = "e")]
    pub expires: i64,
    #[serde(rename = "a")]
    pub audit: String,
    #[serde(rename = "m")]
    pub methods: Vec<String>,
    /// Audit ids of the tokens this one was got from, the original first.
    #[serde(rename = "c", default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<String>,
    /// The identity store revision the issuing replica had applied: revocations by
    /// user or project written at a later revision revoke this token.
    #[serde(rename = "r", default)]
    pub revision: u64,
    /// The application credential this token was got with (directly or not).
    #[serde(rename = "ac", default, skip_serializing_if = "Option::is_none")]
    pub app_cred: Option<String>,
}

impl TokenClaims {
    /// Keystone's `audit_ids`: this token's, then the chain's original one.
    pub fn audit_ids(&self) -> Vec<String> {
        let mut ids = vec![self.audit.clone()];
        if let Some(root) = self.chain.first() {
            ids.push(root.clone());
        }
        ids
    }

    /// Every audit id whose revocation revokes this token.
    pub fn lineage(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.audit).chain(self.chain.iter())
    }
}

fn mac(secret: &[u8], signed: &[u8]) -> Option<Vec<u8>> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).ok()?;
    m.update(signed);
    Some(m.finalize().into_bytes().to_vec())
}

/// Signs `claims` with key `kid`.
pub fn sign(kid: &str, secret: &[u8], claims: &TokenClaims) -> Option<String> {
    if kid.is_empty() || kid.contains('.') || secret.is_empty() {
        return None;
    }
    let payload = serde_json::to_vec(claims).ok()?;
    let signed = format!("{kid}.{}", URL_SAFE_NO_PAD.encode(&payload));
    let sig = mac(secret, signed.as_bytes())?;
    Some(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig)))
}

/// Which key a token says it was signed with: `Some(kid)`, or `None` for a token of
/// the first format (the legacy key). Nothing is verified here.
pub fn key_id(token: &str) -> Option<&str> {
    let mut parts = token.split('.');
    let first = parts.next()?;
    match (parts.next(), parts.next(), parts.next()) {
        (Some(_), Some(_), None) => Some(first),
        _ => None,
    }
}

/// The claims of a token whose signature holds under `secret` (expiry and revocation
/// are checked by the caller).
pub fn verify(secret: &[u8], token: &str) -> Option<TokenClaims> {
    if secret.is_empty() {
        return None;
    }
    let parts: Vec<&str> = token.split('.').collect();
    let (signed, payload, sig) = match parts[..] {
        [p, s] => (URL_SAFE_NO_PAD.decode(p).ok()?, p, s),
        [_, p, s] => (token.rsplit_once('.')?.0.as_bytes().to_vec(), p, s),
        _ => return None,
    };
    let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
    let mut m = Hmac::<Sha256>::new_from_slice(secret).ok()?;
    m.update(&signed);
    m.verify_slice(&sig).ok()?;
    serde_json::from_slice(&payload).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> TokenClaims {
        TokenClaims {
            user: "u".into(),
            project: Some("p".into()),
            issued: 1,
            expires: 2,
            audit: "a".into(),
            methods: vec![],
            chain: vec!["root".into()],
            revision: 7,
            app_cred: None,
        }
    }

    #[test]
    fn tampering_is_detected() {
        let t = sign("k1", b"secret", &claims()).unwrap();
        assert_eq!(key_id(&t), Some("k1"));
        let c = verify(b"secret", &t).unwrap();
        assert_eq!((c.user.as_str(), c.revision), ("u", 7));
        assert_eq!(c.audit_ids(), vec!["a".to_string(), "root".to_string()]);
        assert!(verify(b"other", &t).is_none());
        let (_, rest) = t.split_once('.').unwrap();
        // The key id is covered by the MAC: another kid does not verify.
        assert!(verify(b"secret", &format!("k2.{rest}")).is_none());
        let forged = format!(
            "k1.{}.{}",
            URL_SAFE_NO_PAD.encode(br#"{"u":"admin","i":1,"e":9999999999,"a":"x","m":[]}"#),
            t.rsplit_once('.').unwrap().1
        );
        assert!(verify(b"secret", &forged).is_none());
        assert!(verify(b"secret", "garbage").is_none());
        assert!(verify(b"secret", "a.b.c.d").is_none());
        assert!(sign("bad.kid", b"secret", &claims()).is_none());
    }

    #[test]
    fn first_format_tokens_still_verify() {
        let payload = serde_json::to_vec(&claims()).unwrap();
        let sig = mac(b"legacy", &payload).unwrap();
        let t = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(sig)
        );
        assert_eq!(key_id(&t), None);
        assert_eq!(verify(b"legacy", &t).unwrap().user, "u");
        assert!(verify(b"other", &t).is_none());
    }
}
