//! The ttrpc services over a [`Hub`]: `api.SealedSecretService`, `api.GetResourceService`,
//! `api.SecureMountService`, `api.ImagePullService` and `keyprovider.KeyProviderService`.
//!
//! Errors carry a status that says what kind of failure it was (see [`CdhError::code`]) and a
//! message naming the cause; upstream answers INTERNAL with a fixed text for everything.

use std::sync::Arc;

use async_trait::async_trait;
use peerpod_protocols::cdh::api::{
    GetResourceRequest, GetResourceResponse, ImagePullRequest, ImagePullResponse,
    SecureMountRequest, SecureMountResponse, UnsealSecretInput, UnsealSecretOutput,
};
use peerpod_protocols::cdh::api_ttrpc;
use peerpod_protocols::cdh::keyprovider::{
    KeyProviderKeyWrapProtocolInput, KeyProviderKeyWrapProtocolOutput,
};
use peerpod_protocols::cdh::keyprovider_ttrpc;
use ttrpc::r#async::TtrpcContext;

use crate::error::CdhError;
use crate::hub::Hub;

/// Every service, over one hub.
#[derive(Clone)]
pub struct Services {
    hub: Arc<Hub>,
}

impl Services {
    /// Serves `hub`.
    pub fn new(hub: Arc<Hub>) -> Self {
        Self { hub }
    }

    /// The services, ready to register on a ttrpc server.
    pub fn all(&self) -> Vec<std::collections::HashMap<String, ttrpc::r#async::Service>> {
        let s = Arc::new(self.clone());
        vec![
            api_ttrpc::create_sealed_secret_service(s.clone()),
            api_ttrpc::create_get_resource_service(s.clone()),
            api_ttrpc::create_secure_mount_service(s.clone()),
            api_ttrpc::create_image_pull_service(s.clone()),
            keyprovider_ttrpc::create_key_provider_service(s),
        ]
    }
}

fn status(method: &str, e: CdhError) -> ttrpc::Error {
    peerpod_kbs_client::rpc::status(method, e.code(), &e)
}

#[async_trait]
impl api_ttrpc::SealedSecretService for Services {
    async fn unseal_secret(
        &self,
        _ctx: &TtrpcContext,
        req: UnsealSecretInput,
    ) -> ttrpc::Result<UnsealSecretOutput> {
        let plaintext = self
            .hub
            .unseal(&req.secret)
            .await
            .map_err(|e| status("UnsealSecret", e))?;
        Ok(UnsealSecretOutput {
            plaintext: plaintext.to_vec(),
            ..Default::default()
        })
    }
}

#[async_trait]
impl api_ttrpc::GetResourceService for Services {
    async fn get_resource(
        &self,
        _ctx: &TtrpcContext,
        req: GetResourceRequest,
    ) -> ttrpc::Result<GetResourceResponse> {
        let resource = self
            .hub
            .get_resource(&req.ResourcePath)
            .await
            .map_err(|e| status("GetResource", e))?;
        Ok(GetResourceResponse {
            Resource: resource.to_vec(),
            ..Default::default()
        })
    }
}

#[async_trait]
impl api_ttrpc::SecureMountService for Services {
    async fn secure_mount(
        &self,
        _ctx: &TtrpcContext,
        req: SecureMountRequest,
    ) -> ttrpc::Result<SecureMountResponse> {
        let mount_path = self
            .hub
            .secure_mount(&req.volume_type, &req.options, &req.mount_point)
            .await
            .map_err(|e| status("SecureMount", e))?;
        Ok(SecureMountResponse {
            mount_path,
            ..Default::default()
        })
    }
}

#[async_trait]
impl api_ttrpc::ImagePullService for Services {
    async fn pull_image(
        &self,
        _ctx: &TtrpcContext,
        req: ImagePullRequest,
    ) -> ttrpc::Result<ImagePullResponse> {
        let manifest_digest = self
            .hub
            .pull_image(&req.image_url, &req.bundle_path)
            .await
            .map_err(|e| status("PullImage", e))?;
        Ok(ImagePullResponse {
            manifest_digest,
            ..Default::default()
        })
    }
}

#[async_trait]
impl keyprovider_ttrpc::KeyProviderService for Services {
    async fn un_wrap_key(
        &self,
        _ctx: &TtrpcContext,
        req: KeyProviderKeyWrapProtocolInput,
    ) -> ttrpc::Result<KeyProviderKeyWrapProtocolOutput> {
        let out = self
            .hub
            .unwrap_key(&req.KeyProviderKeyWrapProtocolInput)
            .await
            .map_err(|e| status("UnWrapKey", e))?;
        Ok(KeyProviderKeyWrapProtocolOutput {
            KeyProviderKeyWrapProtocolOutput: out,
            ..Default::default()
        })
    }
}
