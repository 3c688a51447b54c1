//! The sample TEE: no hardware, for tests and development only. Its evidence proves nothing;
//! the agent logs loudly when it falls back to it.

use std::sync::Mutex;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{AttestError, Attester, Measured};

/// The sample attester, with a software measurement register file.
#[derive(Debug, Default)]
pub struct Sample {
    registers: Mutex<std::collections::BTreeMap<u64, [u8; 32]>>,
    init_data: Mutex<Option<Vec<u8>>>,
}

#[async_trait]
impl Attester for Sample {
    fn tee(&self) -> &'static str {
        "sample"
    }

    async fn evidence(&self, report_data: &[u8]) -> Result<Value, AttestError> {
        Ok(json!({"svn": "1", "report_data": STANDARD.encode(report_data)}))
    }

    async fn bind_init_data(&self, digest: &[u8]) -> Result<(), AttestError> {
        let mut bound = self.init_data.lock().unwrap_or_else(|p| p.into_inner());
        match bound.as_deref() {
            Some(d) if d != digest => Err(AttestError::InitDataMismatch(format!(
                "{} was bound already; refusing {}",
                hex::encode(d),
                hex::encode(digest)
            ))),
            _ => {
                *bound = Some(digest.to_vec());
                Ok(())
            }
        }
    }

    async fn extend(&self, index: u64, digest: &[u8]) -> Result<Measured, AttestError> {
        let mut regs = self.registers.lock().unwrap_or_else(|p| p.into_inner());
        let reg = regs.entry(index).or_insert([0; 32]);
        let mut h = Sha256::new();
        h.update(*reg);
        h.update(digest);
        *reg = h.finalize().into();
        Ok(Measured::Extended)
    }

    async fn register(&self, index: u64) -> Result<Vec<u8>, AttestError> {
        let regs = self.registers.lock().unwrap_or_else(|p| p.into_inner());
        Ok(regs.get(&index).copied().unwrap_or([0; 32]).to_vec())
    }
}
