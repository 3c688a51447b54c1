//! Encrypted layer media types: `+encrypted` appended to the plain layer's type.

use crate::error::CryptError;

const SUFFIX: &str = "+encrypted";

/// The plain layer media types whose `+encrypted` forms ocicrypt defines.
const PLAIN: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
];

/// Whether a layer of this media type is encrypted: any type ending in `+encrypted` (compared
/// without regard to ASCII case), so that an encrypted layer of a type this crate does not know
/// is never taken for a plain one.
pub fn is_encrypted(media_type: &str) -> bool {
    let (t, s) = (media_type.as_bytes(), SUFFIX.as_bytes());
    t.len() >= s.len() && t[t.len() - s.len()..].eq_ignore_ascii_case(s)
}

/// The media type of the layer once decrypted: `application/vnd.oci.image.layer.v1.tar+gzip`
/// for `application/vnd.oci.image.layer.v1.tar+gzip+encrypted`, and so on for the plain, gzip
/// and zstd OCI layer types (distributable or not). Anything else is an error: a type that is
/// not encrypted, or an encrypted one whose plain form is not a known layer type.
pub fn decrypted_media_type(media_type: &str) -> Result<String, CryptError> {
    if !is_encrypted(media_type) {
        return Err(CryptError::NotEncrypted {
            media_type: crate::error::quote(media_type),
        });
    }
    let plain = &media_type[..media_type.len() - SUFFIX.len()];
    PLAIN
        .iter()
        .find(|p| **p == plain)
        .map(|p| (*p).to_string())
        .ok_or_else(|| CryptError::Unsupported {
            what: "encrypted layer media type",
            value: crate::error::quote(media_type),
            supported: "application/vnd.oci.image.layer[.nondistributable].v1.tar[+gzip|+zstd]+encrypted",
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encrypted_types_map_to_their_plain_form() {
        for p in PLAIN {
            let e = format!("{p}+encrypted");
            assert!(is_encrypted(&e));
            assert_eq!(decrypted_media_type(&e).ok().as_deref(), Some(*p));
            assert!(!is_encrypted(p));
            assert!(decrypted_media_type(p).is_err());
        }
    }

    #[test]
    fn unknown_encrypted_types_are_encrypted_but_refused() {
        for t in [
            "application/vnd.docker.image.rootfs.diff.tar.gzip+encrypted",
            "application/x-whatever+ENCRYPTED",
            "+encrypted",
            "application/vnd.oci.image.layer.v1.tar+encrypted+encrypted",
        ] {
            assert!(is_encrypted(t), "{t}");
            let e = decrypted_media_type(t).expect_err("unknown type refused");
            assert!(e.to_string().contains("not supported"), "{e}");
        }
        assert!(!is_encrypted(""));
        assert!(!is_encrypted("encrypted"));
        assert!(!is_encrypted(
            "application/vnd.oci.image.layer.v1.tar+encrypted "
        ));
    }
}
