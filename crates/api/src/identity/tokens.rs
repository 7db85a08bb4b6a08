//! Stateless tokens: compact claims signed with HMAC-SHA256 under a secret that every
//! replica reads from the store. Revocation is a store record by audit id.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

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
}

fn mac(secret: &[u8], payload: &[u8]) -> Option<Vec<u8>> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).ok()?;
    m.update(payload);
    Some(m.finalize().into_bytes().to_vec())
}

pub fn sign(secret: &[u8], claims: &TokenClaims) -> Option<String> {
    let payload = serde_json::to_vec(claims).ok()?;
    let sig = mac(secret, &payload)?;
    Some(format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(&payload),
        URL_SAFE_NO_PAD.encode(sig)
    ))
}

/// The claims of a token whose signature holds (expiry is checked by the caller).
pub fn verify(secret: &[u8], token: &str) -> Option<TokenClaims> {
    if secret.is_empty() {
        return None;
    }
    let (p, s) = token.split_once('.')?;
    let payload = URL_SAFE_NO_PAD.decode(p).ok()?;
    let sig = URL_SAFE_NO_PAD.decode(s).ok()?;
    let mut m = Hmac::<Sha256>::new_from_slice(secret).ok()?;
    m.update(&payload);
    m.verify_slice(&sig).ok()?;
    serde_json::from_slice(&payload).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tampering_is_detected() {
        let c = TokenClaims {
            user: "u".into(),
            project: Some("p".into()),
            issued: 1,
            expires: 2,
            audit: "a".into(),
            methods: vec![],
        };
        let t = sign(b"secret", &c).unwrap();
        assert_eq!(verify(b"secret", &t).unwrap().user, "u");
        assert!(verify(b"other", &t).is_none());
        let forged = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(br#"{"u":"admin","i":1,"e":9999999999,"a":"x","m":[]}"#),
            t.split_once('.').unwrap().1
        );
        assert!(verify(b"secret", &forged).is_none());
        assert!(verify(b"secret", "garbage").is_none());
    }
}
