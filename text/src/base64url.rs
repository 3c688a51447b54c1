//! Lenient base64url.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Decodes base64url with or without `=` padding (JWS and JWK members come without it, some
/// evidence documents with it).
pub fn decode_b64url(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    URL_SAFE_NO_PAD.decode(text.trim_end_matches('='))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_is_optional() {
        assert_eq!(decode_b64url("aGk").ok(), Some(b"hi".to_vec()));
        assert_eq!(decode_b64url("aGk=").ok(), Some(b"hi".to_vec()));
        assert_eq!(decode_b64url("").ok(), Some(Vec::new()));
        // The URL-safe alphabet, not the standard one.
        assert_eq!(decode_b64url("-_8").ok(), Some(vec![0xfb, 0xff]));
        assert!(decode_b64url("+/8").is_err());
        assert!(decode_b64url("a!b").is_err());
    }
}
