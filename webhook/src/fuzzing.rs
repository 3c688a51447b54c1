//! Entry points for the fuzz target in `fuzz/` and the in-tree mutation test: arbitrary bytes
//! as an AdmissionReview body and as quantity text. None may panic.

use serde_json::Value;

use crate::mutate::MutationConfig;
use crate::quantity::Quantity;
use crate::review::{Handler, handle, parse_review};

/// Feeds bytes to the review handler and checks what comes back: a well-formed review, for
/// the same uid, whose patch (if any) applies to the object sent. Returns `None` for a body
/// refused as malformed, else whether the answer carried a patch.
pub fn review(data: &[u8]) -> Option<bool> {
    let handler = Handler::Mutate(MutationConfig::default());
    let Ok(answer) = handle(&handler, data) else {
        return None;
    };
    let answer: Value = serde_json::from_slice(&answer).expect("the answer is JSON");
    let request = parse_review(data).expect("an answered review parses");
    let response = &answer["response"];
    assert_eq!(response["uid"].as_str(), Some(request.uid.as_str()));
    let allowed = response["allowed"].as_bool().expect("allowed is a bool");
    if let Some(text) = response["patch"].as_str() {
        use base64::Engine as _;
        assert!(allowed, "a denied review carries a patch");
        assert_eq!(response["patchType"], "JSONPatch");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .expect("the patch is base64");
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).expect("the patch parses");
        let mut object: Value =
            serde_json::from_str(request.object.expect("a patched object").get())
                .expect("the object is JSON");
        json_patch::patch(&mut object, &patch).expect("the patch applies to the object");
        return Some(true);
    }
    assert!(response["patch"].is_null() && response["patchType"].is_null());
    Some(false)
}

/// Feeds text to the quantity parser: a parsed quantity's canonical text parses back to it.
pub fn quantity(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(q) = Quantity::parse(text) {
        let canonical = q.to_decimal_si();
        assert_eq!(
            Quantity::parse(&canonical),
            Ok(q),
            "{text:?} → {canonical:?}"
        );
        let _ = (q.ceil_units(), q.ceil_mib());
    }
}
