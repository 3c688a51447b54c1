//! Appraisal: the attestation policy turns verified claims into AR4SI trust claims, those give
//! the EAR status, and the result is signed as an EAR token (JWT, ES256) — the shape Trustee's
//! attestation service issues and its KBS reads back.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use p256::elliptic_curve::Generate;
use p256::pkcs8::EncodePrivateKey;
use serde_json::{Map, Value, json};

/// Our default appraisal policy.
pub const DEFAULT_ATTESTATION_POLICY: &str = include_str!("policies/attestation-default.rego");
/// Our default resource policy.
pub const DEFAULT_RESOURCE_POLICY: &str = include_str!("policies/resource-default.rego");
/// Example resource policy: every submodule affirming.
pub const AFFIRMING_RESOURCE_POLICY: &str = include_str!("policies/resource-affirming.rego");

/// The AR4SI trust claims, in EAR's order and spelling.
pub const TRUST_CLAIMS: [&str; 8] = [
    "instance-identity",
    "configuration",
    "executables",
    "file-system",
    "hardware",
    "runtime-opaque",
    "storage-opaque",
    "sourced-data",
];

/// Why an appraisal or token operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AppraisalError {
    /// The policy does not compile.
    #[error("policy does not compile: {0}")]
    Compile(String),
    /// Evaluation failed.
    #[error("policy evaluation failed: {0}")]
    Eval(String),
    /// The policy produced something unusable.
    #[error("policy result unusable: {0}")]
    Result(String),
    /// Token signing or verification failed.
    #[error("token: {0}")]
    Token(String),
}

/// The outcome of appraising one TEE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appraisal {
    /// `affirming`, `warning`, `contraindicated` or `none`.
    pub status: &'static str,
    /// The trust claims that were set.
    pub vector: BTreeMap<&'static str, i64>,
}

/// The AR4SI tier of one claim value.
pub fn tier(value: i64) -> &'static str {
    match value {
        -1..=1 => "none",
        2..=31 | -32..=-2 => "affirming",
        32..=95 | -96..=-33 => "warning",
        _ => "contraindicated",
    }
}

fn rank(status: &str) -> u8 {
    match status {
        "none" => 0,
        "affirming" => 1,
        "warning" => 2,
        _ => 3,
    }
}

fn to_regorus(v: &Value) -> Result<regorus::Value, AppraisalError> {
    regorus::Value::from_json_str(&v.to_string()).map_err(|e| AppraisalError::Eval(e.to_string()))
}

fn to_json(v: &regorus::Value) -> Result<Value, AppraisalError> {
    let text = v
        .to_json_str()
        .map_err(|e| AppraisalError::Result(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| AppraisalError::Result(e.to_string()))
}

/// Checks that a policy compiles (with `query_reference_value` available).
pub fn compile_check(policy: &str) -> Result<(), AppraisalError> {
    engine(policy, &Arc::new(BTreeMap::new())).map(|_| ())
}

fn engine(
    policy: &str,
    refs: &Arc<BTreeMap<String, Value>>,
) -> Result<regorus::Engine, AppraisalError> {
    let mut engine = regorus::Engine::new();
    let r = refs.clone();
    engine
        .add_extension(
            "query_reference_value".to_string(),
            1,
            Box::new(move |args: Vec<regorus::Value>| {
                let name = args
                    .first()
                    .and_then(|a| a.as_string().ok().map(|s| s.to_string()))
                    .unwrap_or_default();
                match r.get(&name) {
                    Some(v) => Ok(regorus::Value::from_json_str(&v.to_string())?),
                    None => Ok(regorus::Value::Null),
                }
            }),
        )
        .map_err(|e| AppraisalError::Compile(e.to_string()))?;
    engine
        .add_data(to_regorus(&json!({"reference": refs.as_ref()}))?)
        .map_err(|e| AppraisalError::Compile(e.to_string()))?;
    engine
        .add_policy("policy.rego".to_string(), policy.to_string())
        .map_err(|e| AppraisalError::Compile(e.to_string()))?;
    Ok(engine)
}

/// Runs the attestation policy over `input` (the claims, annotated as Trustee does).
pub fn appraise(
    policy: &str,
    input: &Value,
    refs: &BTreeMap<String, Value>,
) -> Result<Appraisal, AppraisalError> {
    let mut engine = engine(policy, &Arc::new(refs.clone()))?;
    engine.set_input(to_regorus(input)?);
    let mut vector = BTreeMap::new();
    if let Some(claims) = eval_optional(&mut engine, "data.policy.trust_claims")? {
        let claims = to_json(&claims)?;
        let obj = claims
            .as_object()
            .ok_or_else(|| AppraisalError::Result("trust_claims is not an object".into()))?;
        for (k, v) in obj {
            let name = TRUST_CLAIMS
                .iter()
                .find(|c| **c == k.as_str())
                .ok_or_else(|| AppraisalError::Result(format!("unknown trust claim {k:?}")))?;
            let n = v.as_i64().ok_or_else(|| {
                AppraisalError::Result(format!("trust claim {k} is not an integer"))
            })?;
            vector.insert(*name, n);
        }
    } else {
        // Older policies define one rule per claim, with underscores.
        for name in TRUST_CLAIMS {
            let rule = format!("data.policy.{}", name.replace('-', "_"));
            if let Some(v) = eval_optional(&mut engine, &rule)? {
                let n = to_json(&v)?
                    .as_i64()
                    .ok_or_else(|| AppraisalError::Result(format!("{name} is not an integer")))?;
                vector.insert(name, n);
            }
        }
    }
    if vector.is_empty() {
        return Err(AppraisalError::Result(
            "the attestation policy set no trust claim".into(),
        ));
    }
    let status = vector
        .values()
        .map(|v| tier(*v))
        .max_by_key(|s| rank(s))
        .unwrap_or("none");
    Ok(Appraisal { status, vector })
}

/// The value of a query, or `None` when it is undefined (a rule the policy does not define).
fn eval_optional(
    engine: &mut regorus::Engine,
    query: &str,
) -> Result<Option<regorus::Value>, AppraisalError> {
    let results = engine
        .eval_query(query.to_string(), false)
        .map_err(|e| AppraisalError::Eval(e.to_string()))?;
    Ok(results
        .result
        .into_iter()
        .next()
        .and_then(|r| r.expressions.into_iter().next())
        .map(|e| e.value)
        .filter(|v| *v != regorus::Value::Undefined))
}

/// Evaluates a resource policy: `data.policy.allow` with `data["resource-path"]` and the token
/// claims as input. Anything but `true` denies.
pub fn resource_allowed(policy: &str, claims: &Value, path: &str) -> Result<bool, AppraisalError> {
    let mut engine = regorus::Engine::new();
    engine
        .add_data(to_regorus(&json!({"resource-path": path}))?)
        .map_err(|e| AppraisalError::Compile(e.to_string()))?;
    engine
        .add_policy("resource-policy.rego".to_string(), policy.to_string())
        .map_err(|e| AppraisalError::Compile(e.to_string()))?;
    engine.set_input(to_regorus(claims)?);
    let v = eval_optional(&mut engine, "data.policy.allow")?;
    Ok(v == Some(regorus::Value::Bool(true)))
}

/// Signs and checks EAR tokens with an ES256 key made at start-up (as Trustee does without a
/// configured signer); the public key travels in the header as a JWK.
pub struct TokenSigner {
    encoding: EncodingKey,
    decoding: DecodingKey,
    jwk: Value,
    lifetime_secs: u64,
}

impl TokenSigner {
    /// A fresh signer; tokens live `lifetime_secs`.
    pub fn new(lifetime_secs: u64) -> Result<Self, AppraisalError> {
        let key = p256::SecretKey::generate();
        let der = key
            .to_pkcs8_der()
            .map_err(|e| AppraisalError::Token(e.to_string()))?;
        let point =
            p256::elliptic_curve::sec1::ToSec1Point::to_sec1_point(&key.public_key(), false);
        let bytes = point.as_bytes();
        let (x, y) = (
            URL_SAFE_NO_PAD.encode(&bytes[1..33]),
            URL_SAFE_NO_PAD.encode(&bytes[33..65]),
        );
        let decoding = DecodingKey::from_ec_components(&x, &y)
            .map_err(|e| AppraisalError::Token(e.to_string()))?;
        Ok(Self {
            encoding: EncodingKey::from_ec_der(der.as_bytes()),
            decoding,
            jwk: json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "x": x, "y": y}),
            lifetime_secs,
        })
    }

    /// Issues a token for one appraised CPU TEE.
    pub fn issue(
        &self,
        appraisal: &Appraisal,
        annotated_evidence: Value,
    ) -> Result<String, AppraisalError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut vector = Map::new();
        for (k, v) in &appraisal.vector {
            vector.insert((*k).to_string(), json!(v));
        }
        let claims = json!({
            "eat_profile": "tag:github.com,2024:confidential-containers/Trustee",
            "iat": now,
            "ear.verifier-id": {
                "build": concat!("peerpod-tests test-kbs ", env!("CARGO_PKG_VERSION")),
                "developer": "https://confidentialcontainers.org",
            },
            "submods": {
                "cpu0": {
                    "ear.status": appraisal.status,
                    "ear.trustworthiness-vector": vector,
                    "ear.appraisal-policy-id": "default",
                    "ear.veraison.annotated-evidence": annotated_evidence,
                }
            },
            "exp": now + self.lifetime_secs,
        });
        let mut header = Header::new(Algorithm::ES256);
        header.jwk = Some(
            serde_json::from_value(self.jwk.clone())
                .map_err(|e| AppraisalError::Token(e.to_string()))?,
        );
        jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|e| AppraisalError::Token(e.to_string()))
    }

    /// Verifies a token this KBS issued (signature and expiry); returns its claims.
    pub fn verify(&self, token: &str) -> Result<Value, AppraisalError> {
        let mut validation = Validation::new(Algorithm::ES256);
        validation.validate_aud = false;
        validation.leeway = 0;
        jsonwebtoken::decode::<Value>(token, &self.decoding, &validation)
            .map(|d| d.claims)
            .map_err(|e| AppraisalError::Token(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_and_status() {
        assert_eq!(tier(0), "none");
        assert_eq!(tier(2), "affirming");
        assert_eq!(tier(33), "warning");
        assert_eq!(tier(97), "contraindicated");
        let input = json!({"sample": {"launch_digest": "abcde", "svn": "1", "debug": false}});
        let none =
            appraise(DEFAULT_ATTESTATION_POLICY, &input, &BTreeMap::new()).expect("appraise");
        assert_eq!(none.status, "contraindicated");
        assert_eq!(none.vector["executables"], 33);
        assert_eq!(none.vector["configuration"], 2);
        let refs = BTreeMap::from([
            ("launch_digest".to_string(), json!(["abcde"])),
            ("svn".to_string(), json!(["1"])),
        ]);
        let ok = appraise(DEFAULT_ATTESTATION_POLICY, &input, &refs).expect("appraise");
        assert_eq!(ok.status, "affirming");
    }

    #[test]
    fn older_per_rule_policies_work() {
        let policy = "package policy\nimport rego.v1\nhardware := 2\nexecutables := 40\n";
        let a = appraise(policy, &json!({}), &BTreeMap::new()).expect("appraise");
        assert_eq!(a.status, "warning");
        assert_eq!(a.vector.len(), 2);
        let empty = appraise("package policy\nx := 1\n", &json!({}), &BTreeMap::new());
        assert!(matches!(empty, Err(AppraisalError::Result(_))));
    }

    #[test]
    fn tokens_round_trip_and_resist_tampering() {
        let signer = TokenSigner::new(300).expect("signer");
        let a = Appraisal {
            status: "affirming",
            vector: BTreeMap::from([("hardware", 2)]),
        };
        let token = signer.issue(&a, json!({"sample": {}})).expect("issue");
        let claims = signer.verify(&token).expect("verify");
        assert_eq!(claims["submods"]["cpu0"]["ear.status"], "affirming");
        let header: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(token.split('.').next().expect("header"))
                .expect("b64"),
        )
        .expect("json");
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["jwk"]["crv"], "P-256");
        let other = TokenSigner::new(300).expect("signer");
        assert!(other.verify(&token).is_err());
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(b"{\"submods\":{}}");
        parts[1] = &forged;
        assert!(signer.verify(&parts.join(".")).is_err());
    }

    #[test]
    fn resource_policies() {
        let affirming = json!({"submods": {"cpu0": {"ear.status": "affirming",
            "ear.trustworthiness-vector": {"hardware": 2, "executables": 3, "configuration": 2}}}});
        let warning = json!({"submods": {"cpu0": {"ear.status": "warning",
            "ear.trustworthiness-vector": {"hardware": 2, "executables": 33, "configuration": 2}}}});
        for p in [DEFAULT_RESOURCE_POLICY, AFFIRMING_RESOURCE_POLICY] {
            assert!(resource_allowed(p, &affirming, "default/key/x").expect("eval"));
            assert!(!resource_allowed(p, &warning, "default/key/x").expect("eval"));
        }
        let by_path = "package policy\nimport rego.v1\nallow if data[\"resource-path\"] == \"default/key/x\"\n";
        assert!(resource_allowed(by_path, &json!({}), "default/key/x").expect("eval"));
        assert!(!resource_allowed(by_path, &json!({}), "default/key/y").expect("eval"));
        assert!(resource_allowed("not rego", &json!({}), "a/b/c").is_err());
    }
}
