//! The ttrpc service: `attestation_agent.AttestationAgentService`.

use std::sync::Arc;

use async_trait::async_trait;
use peerpod_protocols::aa::attestation_agent::{
    BindInitDataRequest, BindInitDataResponse, ExtendRuntimeMeasurementRequest,
    ExtendRuntimeMeasurementResponse, GetAdditionalEvidenceRequest, GetAdditionalTeesRequest,
    GetAdditionalTeesResponse, GetEvidenceRequest, GetEvidenceResponse, GetTeeTypeRequest,
    GetTeeTypeResponse, GetTokenRequest, GetTokenResponse, RuntimeMeasurementResult,
};
use peerpod_protocols::aa::attestation_agent_ttrpc::AttestationAgentService;
use ttrpc::r#async::TtrpcContext;

use crate::api::{AaError, AttestationAgent, MeasurementResult};

/// The service, over an [`AttestationAgent`].
pub struct AaService {
    aa: Arc<AttestationAgent>,
}

impl AaService {
    /// Serves `aa`.
    pub fn new(aa: Arc<AttestationAgent>) -> Self {
        Self { aa }
    }
}

/// One mapping from our errors to ttrpc status codes: a request we cannot serve is
/// INVALID_ARGUMENT or FAILED_PRECONDITION, an attestation past `attestation_deadline_secs` is
/// DEADLINE_EXCEEDED, any other failure of the TEE or the KBS is INTERNAL. The
/// message (the whole error chain) and the log line come from the helper the CDH shares.
fn status(method: &str, e: AaError) -> ttrpc::Error {
    let code = match &e {
        AaError::Request(_)
        | AaError::EventLog(crate::eventlog::EventLogError::Invalid(_))
        | AaError::Attester(crate::attester::AttestError::ReportDataSize { .. }) => {
            ttrpc::Code::INVALID_ARGUMENT
        }
        AaError::Attester(crate::attester::AttestError::InitDataMismatch(_)) => {
            ttrpc::Code::FAILED_PRECONDITION
        }
        AaError::Deadline { .. } => ttrpc::Code::DEADLINE_EXCEEDED,
        AaError::Kbs(k) if k.is_deadline() => ttrpc::Code::DEADLINE_EXCEEDED,
        _ => ttrpc::Code::INTERNAL,
    };
    peerpod_kbs_client::rpc::status(method, code, &e)
}

#[async_trait]
impl AttestationAgentService for AaService {
    async fn get_evidence(
        &self,
        _ctx: &TtrpcContext,
        req: GetEvidenceRequest,
    ) -> ttrpc::Result<GetEvidenceResponse> {
        let evidence = self
            .aa
            .get_evidence(&req.RuntimeData)
            .await
            .map_err(|e| status("GetEvidence", e))?;
        Ok(GetEvidenceResponse {
            Evidence: evidence,
            ..Default::default()
        })
    }

    async fn get_additional_evidence(
        &self,
        _ctx: &TtrpcContext,
        _req: GetAdditionalEvidenceRequest,
    ) -> ttrpc::Result<GetEvidenceResponse> {
        // No additional devices (GPUs) are attested: empty evidence, as upstream answers then.
        Ok(GetEvidenceResponse::default())
    }

    async fn get_token(
        &self,
        _ctx: &TtrpcContext,
        req: GetTokenRequest,
    ) -> ttrpc::Result<GetTokenResponse> {
        let token = self
            .aa
            .get_token(&req.TokenType)
            .await
            .map_err(|e| status("GetToken", e))?;
        Ok(GetTokenResponse {
            Token: token,
            ..Default::default()
        })
    }

    async fn extend_runtime_measurement(
        &self,
        _ctx: &TtrpcContext,
        req: ExtendRuntimeMeasurementRequest,
    ) -> ttrpc::Result<ExtendRuntimeMeasurementResponse> {
        let result = self
            .aa
            .extend_runtime_measurement(
                &req.Domain,
                &req.Operation,
                &req.Content,
                req.RegisterIndex,
            )
            .await
            .map_err(|e| status("ExtendRuntimeMeasurement", e))?;
        let code = match result {
            MeasurementResult::Ok => RuntimeMeasurementResult::OK,
            MeasurementResult::NotSupported => RuntimeMeasurementResult::NOT_SUPPORTED,
            MeasurementResult::NotEnabled => RuntimeMeasurementResult::NOT_ENABLED,
        };
        let reply = ExtendRuntimeMeasurementResponse {
            Result: code.into(),
            ..Default::default()
        };
        Ok(reply)
    }

    async fn bind_init_data(
        &self,
        _ctx: &TtrpcContext,
        req: BindInitDataRequest,
    ) -> ttrpc::Result<BindInitDataResponse> {
        self.aa
            .bind_init_data(&req.Digest)
            .await
            .map_err(|e| status("BindInitData", e))?;
        Ok(BindInitDataResponse::default())
    }

    async fn get_tee_type(
        &self,
        _ctx: &TtrpcContext,
        _req: GetTeeTypeRequest,
    ) -> ttrpc::Result<GetTeeTypeResponse> {
        Ok(GetTeeTypeResponse {
            tee: self.aa.tee().to_string(),
            ..Default::default()
        })
    }

    async fn get_additional_tees(
        &self,
        _ctx: &TtrpcContext,
        _req: GetAdditionalTeesRequest,
    ) -> ttrpc::Result<GetAdditionalTeesResponse> {
        Ok(GetAdditionalTeesResponse::default())
    }
}
