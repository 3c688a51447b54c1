//! The sample TEE: no hardware, for tests. Evidence `{"svn": "<n>", "report_data": "<base64>"}`;
//! the only check is that the report data is the expected one.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Expected, VerifyError};

#[derive(Deserialize)]
struct SampleEvidence {
    svn: String,
    #[serde(default)]
    report_data: String,
}

pub(super) fn verify(evidence: &Value, expected: &Expected<'_>) -> Result<Value, VerifyError> {
    let e: SampleEvidence =
        serde_json::from_value(evidence.clone()).map_err(|err| VerifyError::Malformed {
            tee: "sample",
            detail: err.to_string(),
        })?;
    let data = STANDARD
        .decode(&e.report_data)
        .map_err(|err| VerifyError::Malformed {
            tee: "sample",
            detail: format!("report_data is not base64: {err}"),
        })?;
    if data != expected.report_data {
        return Err(VerifyError::rejected(
            "report data",
            "sample evidence does not carry the runtime-data digest (wrong nonce or TEE key?)",
        ));
    }
    Ok(json!({
        "svn": e.svn,
        "report_data": e.report_data,
        "launch_digest": "abcde",
        "platform_version": {"major": 1, "minor": 4},
        "debug": false,
    }))
}
