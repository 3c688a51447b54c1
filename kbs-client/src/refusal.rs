//! What a KBS error answer means for a client, by Trustee's error `type` rather than the HTTP
//! status alone.
//!
//! Trustee names the kind of every error in the RFC 7807 `type`
//! (`https://github.com/confidential-containers/kbs/errors/<Variant>`), while its statuses have
//! changed across releases: at 33e1bc57 everything but an unknown path or plugin (404) is 401 —
//! a policy denial and a missing resource included — and later releases answer 403 for
//! `PolicyDeny`. Classifying by status would report a denial or a missing resource as a refused
//! token against one release and correctly against another; the `type` means the same in all.

/// What a KBS error answer to a resource request means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The token is missing, expired, or signed by a key the KBS no longer trusts
    /// (`TokenNotFound`, `TokenVerifierError`): attest again and retry.
    Token,
    /// The resource policy denies the resource to this token's claims (`PolicyDeny`). A token
    /// from a fresh attestation may carry other claims (fixed reference values or attestation
    /// policy), so one re-attestation is worth trying before reporting the denial.
    Policy,
    /// The resource does not exist: 404, or Trustee's `PluginInternalError` for a resource
    /// request (how 33e1bc57 reports a missing resource; it does not tell a missing one from a
    /// broken storage backend).
    NotFound,
    /// The KBS refused the attestation itself (`AttestationError`).
    Attestation,
    /// Any other refusal.
    Other,
}

impl Refusal {
    /// Classifies an answer with `status` and Trustee variant `kind`.
    pub fn classify(status: u16, kind: Option<&str>) -> Self {
        match kind {
            Some("TokenNotFound" | "TokenVerifierError") => Refusal::Token,
            Some("PolicyDeny") => Refusal::Policy,
            Some("PluginInternalError" | "PluginNotFound" | "InvalidRequestPath") => {
                Refusal::NotFound
            }
            Some("AttestationError") => Refusal::Attestation,
            Some(_) if status == 404 => Refusal::NotFound,
            Some(_) => Refusal::Other,
            // Not a Trustee error body: fall back to the status, as the protocol defines it.
            None => match status {
                401 => Refusal::Token,
                403 => Refusal::Policy,
                404 => Refusal::NotFound,
                _ => Refusal::Other,
            },
        }
    }

    /// Whether one fresh attestation may turn this refusal into a success.
    pub fn may_pass_with_a_fresh_token(self) -> bool {
        matches!(self, Refusal::Token | Refusal::Policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_type_first_then_status() {
        // Trustee 33e1bc57: one status (401), four meanings.
        assert_eq!(Refusal::classify(401, Some("PolicyDeny")), Refusal::Policy);
        assert_eq!(
            Refusal::classify(401, Some("PluginInternalError")),
            Refusal::NotFound
        );
        assert_eq!(
            Refusal::classify(401, Some("TokenVerifierError")),
            Refusal::Token
        );
        assert_eq!(
            Refusal::classify(401, Some("TokenNotFound")),
            Refusal::Token
        );
        assert_eq!(
            Refusal::classify(401, Some("AttestationError")),
            Refusal::Attestation
        );
        // Newer Trustee: the same kinds under other statuses.
        assert_eq!(Refusal::classify(403, Some("PolicyDeny")), Refusal::Policy);
        assert_eq!(
            Refusal::classify(404, Some("PluginNotFound")),
            Refusal::NotFound
        );
        assert_eq!(
            Refusal::classify(404, Some("SomethingNew")),
            Refusal::NotFound
        );
        assert_eq!(Refusal::classify(401, Some("JweError")), Refusal::Other);
        // No Trustee body: the status decides.
        assert_eq!(Refusal::classify(401, None), Refusal::Token);
        assert_eq!(Refusal::classify(403, None), Refusal::Policy);
        assert_eq!(Refusal::classify(404, None), Refusal::NotFound);
        assert_eq!(Refusal::classify(500, None), Refusal::Other);
        assert!(Refusal::Policy.may_pass_with_a_fresh_token());
        assert!(!Refusal::NotFound.may_pass_with_a_fresh_token());
    }
}
