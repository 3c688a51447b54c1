//! The annotation form of initdata: standard base64 of a gzip stream.
//!
//! This is what goes into the pod annotation `io.katacontainers.config.hypervisor.cc_init_data`
//! (or the `INITDATA` key of the peer-pods config map).

use std::io::{Read, Write};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// Default bound on the decompressed size of an initdata annotation: 2 MiB.
pub const DEFAULT_DECODE_LIMIT: usize = 2 * 1024 * 1024;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Why an annotation could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum AnnotationError {
    /// The annotation is empty.
    #[error("the initdata annotation is empty")]
    Empty,
    /// The base64 text is wrapped over several lines.
    #[error(
        "the initdata annotation contains line breaks: the Kata runtime expects one line of base64; \
         encode with `base64 -w0` or `initdata encode`"
    )]
    Wrapped,
    /// The text is not standard base64.
    #[error("the initdata annotation is not standard base64")]
    Base64(#[source] base64::DecodeError),
    /// The decoded bytes are not a gzip stream.
    #[error(
        "the initdata annotation is base64 but not of gzip data (it must be `gzip | base64 -w0` \
         of the TOML document)"
    )]
    NotGzip,
    /// The gzip stream is corrupt or truncated.
    #[error("the initdata annotation's gzip stream is corrupt")]
    Gzip(#[source] std::io::Error),
    /// The decompressed document is larger than the configured bound.
    #[error(
        "the initdata annotation decompresses to more than {limit} bytes; refusing it \
         (raise the limit if the document is really this large)"
    )]
    TooLarge {
        /// The bound that was exceeded, in bytes.
        limit: usize,
    },
}

/// Decodes an annotation into the initdata document's bytes.
///
/// Leading and trailing whitespace (such as the newline `base64` prints) is tolerated. At most
/// `limit` bytes are decompressed: a larger document, such as a gzip bomb, is refused without
/// being inflated further.
pub fn decode_annotation(text: &str, limit: usize) -> Result<Vec<u8>, AnnotationError> {
    let text = text.trim_matches(|c: char| c.is_ascii_whitespace());
    if text.is_empty() {
        return Err(AnnotationError::Empty);
    }
    if text.contains(['\n', '\r']) {
        return Err(AnnotationError::Wrapped);
    }
    let compressed = STANDARD.decode(text).map_err(AnnotationError::Base64)?;
    if !compressed.starts_with(&GZIP_MAGIC) {
        return Err(AnnotationError::NotGzip);
    }

    let decoder = flate2::read::GzDecoder::new(compressed.as_slice());
    // Read one byte past the limit so that "exactly at the limit" and "over it" differ.
    let mut bounded = decoder.take(u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1));
    let mut out = Vec::new();
    bounded
        .read_to_end(&mut out)
        .map_err(AnnotationError::Gzip)?;
    if out.len() > limit {
        return Err(AnnotationError::TooLarge { limit });
    }
    Ok(out)
}

/// Encodes an initdata document into its annotation form.
pub fn encode_annotation(document: &[u8]) -> String {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    // Writing into a Vec cannot fail.
    let compressed = encoder
        .write_all(document)
        .and_then(|()| encoder.finish())
        .unwrap_or_default();
    STANDARD.encode(compressed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_tolerates_a_trailing_newline() {
        let doc = b"version = \"0.1.0\"\nalgorithm = \"sha256\"\n";
        let encoded = encode_annotation(doc);
        assert!(!encoded.contains('\n'));
        assert_eq!(decode_annotation(&encoded, 1024).expect("decodes"), doc);
        let with_newline = format!("{encoded}\n");
        assert_eq!(
            decode_annotation(&with_newline, 1024).expect("decodes"),
            doc
        );
    }

    #[test]
    fn refuses_bad_layers_with_distinct_errors() {
        assert!(matches!(
            decode_annotation(" \n", 10),
            Err(AnnotationError::Empty)
        ));
        assert!(matches!(
            decode_annotation("not base64!", 10),
            Err(AnnotationError::Base64(_))
        ));
        let plain = STANDARD.encode(b"version = \"0.1.0\"");
        assert!(matches!(
            decode_annotation(&plain, 100),
            Err(AnnotationError::NotGzip)
        ));
        let mut truncated = STANDARD
            .decode(encode_annotation(&[b'x'; 4000]))
            .expect("own encoding");
        truncated.truncate(truncated.len() / 2);
        assert!(matches!(
            decode_annotation(&STANDARD.encode(truncated), 10_000),
            Err(AnnotationError::Gzip(_))
        ));
        let encoded = encode_annotation(&[b'y'; 200]);
        let wrapped = format!("{}\n{}", &encoded[..10], &encoded[10..]);
        assert!(matches!(
            decode_annotation(&wrapped, 1000),
            Err(AnnotationError::Wrapped)
        ));
    }

    #[test]
    fn a_gzip_bomb_is_refused_at_the_limit() {
        // 64 MiB of zeros compresses to about 64 KiB; the decoder must stop at the limit.
        let bomb = encode_annotation(&vec![0u8; 64 * 1024 * 1024]);
        let err = decode_annotation(&bomb, DEFAULT_DECODE_LIMIT).expect_err("bomb");
        assert!(
            matches!(err, AnnotationError::TooLarge { limit } if limit == DEFAULT_DECODE_LIMIT)
        );
        assert!(err.to_string().contains("2097152 bytes"));
    }

    #[test]
    fn the_limit_is_inclusive() {
        let doc = vec![b'z'; 100];
        let encoded = encode_annotation(&doc);
        assert_eq!(decode_annotation(&encoded, 100).expect("at the limit"), doc);
        assert!(matches!(
            decode_annotation(&encoded, 99),
            Err(AnnotationError::TooLarge { limit: 99 })
        ));
    }
}
