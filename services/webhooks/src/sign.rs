//! Standard Webhooks signatures: HMAC-SHA256 over
//! `<webhook-id>.<webhook-timestamp>.<body>` with the endpoint's secret,
//! sent as `v1,<base64>`; during a rotation, one signature per secret,
//! space separated. Secrets are 32 random bytes, shown as `whsec_<base64>`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha2_hmac::Sha256;
use zeroize::Zeroizing;

/// The bytes of a new secret.
pub(crate) const SECRET_BYTES: usize = 32;

/// A new random secret.
pub(crate) fn generate() -> Zeroizing<Vec<u8>> {
    let mut secret = Zeroizing::new(vec![0u8; SECRET_BYTES]);
    // The operating system's generator failing leaves nothing safe to do.
    getrandom::fill(&mut secret).expect("the operating system's random source failed");
    secret
}

/// A secret as partners configure it in their receiver.
pub(crate) fn display(secret: &[u8]) -> String {
    format!("whsec_{}", B64.encode(secret))
}

/// The `webhook-signature` value for a delivery, signed with every secret
/// given (the current one first).
pub(crate) fn signature(secrets: &[&[u8]], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|secret| {
            // HMAC takes a key of any length.
            let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
            mac.update(id.as_bytes());
            mac.update(b".");
            mac.update(timestamp.to_string().as_bytes());
            mac.update(b".");
            mac.update(body);
            format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_specifications_example_signs_the_same() {
        // The example of the Standard Webhooks specification.
        let secret = B64.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let signed = signature(
            &[&secret],
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signed, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn a_rotation_signs_with_both_secrets() {
        let (a, b) = (generate(), generate());
        let both = signature(&[&a, &b], "7", 1, b"{}");
        let parts: Vec<&str> = both.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], signature(&[&a], "7", 1, b"{}"));
        assert_eq!(parts[1], signature(&[&b], "7", 1, b"{}"));
        assert!(display(&a).starts_with("whsec_"));
        assert_ne!(a.as_slice(), b.as_slice());
    }
}
