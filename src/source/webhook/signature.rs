//! Webhook signatures: `X-Nuki-Signature-SHA256` is the hex HMAC-SHA256 of the raw body.
//!
//! Checked before the body is parsed, against every configured secret (so a secret can be
//! rotated), with the constant-time comparison of the `hmac` crate.

use hmac::{Hmac, KeyInit, Mac};
use hyper::header::HeaderName;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The header Nuki puts the signature in; a `HeaderName` so that looking it up parses nothing.
pub const HEADER: HeaderName = HeaderName::from_static("x-nuki-signature-sha256");

/// Why a webhook's signature was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the X-Nuki-Signature-SHA256 header is missing")]
    Missing,
    #[error("the X-Nuki-Signature-SHA256 header is not 64 hex digits")]
    Malformed,
    #[error("the signature matches none of the configured secrets")]
    Mismatch,
}

/// The secrets a webhook may be signed with.
#[derive(Clone)]
pub struct Verifier {
    keys: Vec<HmacSha256>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("secrets", &self.keys.len())
            .finish()
    }
}

impl Verifier {
    /// A verifier for these secrets. Empty secrets are refused by the configuration before
    /// they get here.
    pub fn new<S: AsRef<[u8]>>(secrets: &[S]) -> Self {
        let keys = secrets
            .iter()
            .map(|secret| {
                HmacSha256::new_from_slice(secret.as_ref()).expect("HMAC takes keys of any length")
            })
            .collect();
        Self { keys }
    }

    /// Whether any secret is configured; without one, webhooks are accepted unsigned.
    pub fn is_enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Checks a signature header value (lowercase or uppercase hex) against the raw body.
    /// Always succeeds when no secret is configured.
    pub fn verify(&self, header: Option<&[u8]>, body: &[u8]) -> Result<(), SignatureError> {
        if !self.is_enabled() {
            return Ok(());
        }
        let header = header.ok_or(SignatureError::Missing)?;
        let mut tag = [0u8; 32];
        hex::decode_to_slice(header.trim_ascii(), &mut tag)
            .map_err(|_| SignatureError::Malformed)?;
        let matches = self.keys.iter().any(|key| {
            let mut mac = key.clone();
            mac.update(body);
            mac.verify_slice(&tag).is_ok()
        });
        matches.then_some(()).ok_or(SignatureError::Mismatch)
    }
}

/// The lowercase hex signature Nuki would send for `body` signed with `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = br#"{"feature":"DEVICE_STATUS","smartlockId":1}"#;

    #[test]
    fn known_answer_rfc4231_case_2() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn accepts_either_case_and_any_configured_secret() {
        let verifier = Verifier::new(&["old-secret", "new-secret"]);
        for secret in ["old-secret", "new-secret"] {
            let signature = sign(secret.as_bytes(), BODY);
            assert_eq!(verifier.verify(Some(signature.as_bytes()), BODY), Ok(()));
            let upper = signature.to_uppercase();
            assert_eq!(verifier.verify(Some(upper.as_bytes()), BODY), Ok(()));
        }
    }

    #[test]
    fn refuses_tampered_truncated_missing_and_foreign_signatures() {
        let verifier = Verifier::new(&["secret"]);
        let signature = sign(b"secret", BODY);
        let tampered_body = br#"{"feature":"DEVICE_STATUS","smartlockId":2}"#;
        assert_eq!(
            verifier.verify(Some(signature.as_bytes()), tampered_body),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verifier.verify(Some(&signature.as_bytes()[..63]), BODY),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verifier.verify(Some(&signature.as_bytes()[..62]), BODY),
            Err(SignatureError::Malformed)
        );
        assert_eq!(verifier.verify(None, BODY), Err(SignatureError::Missing));
        assert_eq!(
            verifier.verify(Some(b""), BODY),
            Err(SignatureError::Malformed)
        );
        let foreign = sign(b"other", BODY);
        assert_eq!(
            verifier.verify(Some(foreign.as_bytes()), BODY),
            Err(SignatureError::Mismatch)
        );
        let mut flipped = signature.into_bytes();
        flipped[0] = if flipped[0] == b'0' { b'1' } else { b'0' };
        assert_eq!(
            verifier.verify(Some(&flipped), BODY),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn without_secrets_everything_is_accepted() {
        let verifier = Verifier::new::<&str>(&[]);
        assert!(!verifier.is_enabled());
        assert_eq!(verifier.verify(None, BODY), Ok(()));
    }
}
