//! The typed commands.

use crate::frame::{CommandBuilder, Response, cc};
use crate::transport::Transport;
use crate::types::{Attest, NvPublic, PcrSelection, Public, RsaSignature, alg, handle};
use crate::{Error, ResponseCode};

/// A PCR bank, by hash algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PcrBank {
    /// The SHA-256 bank: the one the Azure vTPM quotes and initdata is measured into.
    Sha256,
    /// The SHA-384 bank.
    Sha384,
}

impl PcrBank {
    /// The bank's `TPM_ALG_ID`.
    pub fn alg(self) -> u16 {
        match self {
            PcrBank::Sha256 => alg::SHA256,
            PcrBank::Sha384 => alg::SHA384,
        }
    }

    /// The digest size of the bank.
    pub fn digest_size(self) -> usize {
        match self {
            PcrBank::Sha256 => 32,
            PcrBank::Sha384 => 48,
        }
    }
}

/// `TPM_PT_NV_BUFFER_MAX`: the largest NV read or write in one command.
const PT_NV_BUFFER_MAX: u32 = 0x100 + 44;
/// `TPM_CAP_TPM_PROPERTIES`.
const CAP_TPM_PROPERTIES: u32 = 6;
/// NV chunk size when the TPM does not say: the smallest any TPM we know supports.
const FALLBACK_NV_CHUNK: usize = 512;

/// A TPM, reached through a [`Transport`].
#[derive(Debug)]
pub struct Tpm {
    transport: Transport,
    nv_chunk: Option<usize>,
}

/// A quote and what it was made from.
#[derive(Debug, Clone)]
pub struct Quote {
    /// The marshalled `TPMS_ATTEST` the signature covers.
    pub message: Vec<u8>,
    /// The parsed form of `message`.
    pub attest: Attest,
    /// The signature.
    pub signature: RsaSignature,
}

impl Tpm {
    /// Uses a transport.
    pub fn new(transport: Transport) -> Self {
        Self {
            transport,
            nv_chunk: None,
        }
    }

    /// Opens a transport from a specification (see [`Transport::open`]).
    pub fn open(spec: &str) -> Result<Self, Error> {
        Ok(Self::new(Transport::open(spec)?))
    }

    fn run(
        &mut self,
        name: &'static str,
        cmd: CommandBuilder,
        handles: usize,
    ) -> Result<Vec<u8>, Error> {
        let bytes = cmd.build()?;
        let resp = self.transport.transact(&bytes)?;
        // Parse once here so errors surface with the command's name.
        Response::parse(name, &resp, handles)?;
        Ok(resp)
    }

    /// `TPM2_Startup(CLEAR)`; a TPM that is already started is not an error.
    pub fn startup_clear(&mut self) -> Result<(), Error> {
        let mut c = CommandBuilder::new(cc::STARTUP);
        c.params().u16(0);
        match self.run("Startup", c, 0) {
            Err(Error::Command { code, .. }) if code.is(ResponseCode::INITIALIZE) => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// Reads one fixed or variable TPM property (`TPM_PT_*`).
    pub fn property(&mut self, property: u32) -> Result<u32, Error> {
        let mut c = CommandBuilder::new(cc::GET_CAPABILITY);
        c.params().u32(CAP_TPM_PROPERTIES).u32(property).u32(1);
        let resp = self.run("GetCapability", c, 0)?;
        let mut p = Response::parse("GetCapability", &resp, 0)?.params;
        p.u8("moreData")?;
        let cap = p.u32("capability")?;
        let count = p.u32("count")?;
        if cap != CAP_TPM_PROPERTIES || count == 0 {
            return Err(Error::Malformed {
                what: "GetCapability response",
                detail: format!("property 0x{property:x} not returned"),
            });
        }
        let got = p.u32("property")?;
        let value = p.u32("value")?;
        if got != property {
            return Err(Error::Malformed {
                what: "GetCapability response",
                detail: format!("asked for property 0x{property:x}, got 0x{got:x}"),
            });
        }
        Ok(value)
    }

    /// Creates a primary key under a hierarchy (empty hierarchy password); returns its transient
    /// handle and public area.
    pub fn create_primary(
        &mut self,
        hierarchy: u32,
        template: &Public,
    ) -> Result<(u32, Public), Error> {
        let mut c = CommandBuilder::new(cc::CREATE_PRIMARY)
            .handle(hierarchy)
            .password(b"");
        let p = c.params();
        // TPM2B_SENSITIVE_CREATE: empty userAuth and data.
        p.u16(4).u16(0).u16(0);
        p.tpm2b("inPublic", &template.marshal()?)?;
        p.tpm2b("outsideInfo", &[])?;
        p.u32(0); // creationPCR: none
        let resp = self.run("CreatePrimary", c, 1)?;
        let mut r = Response::parse("CreatePrimary", &resp, 1)?;
        let public = Public::parse_sized(&mut r.params)?;
        Ok((r.handles[0], public))
    }

    /// Makes a transient object persistent at `persistent` (owner authorization, empty).
    pub fn evict_control(&mut self, object: u32, persistent: u32) -> Result<(), Error> {
        let mut c = CommandBuilder::new(cc::EVICT_CONTROL)
            .handle(handle::OWNER)
            .handle(object)
            .password(b"");
        c.params().u32(persistent);
        self.run("EvictControl", c, 0).map(|_| ())
    }

    /// Unloads a transient object or session.
    pub fn flush_context(&mut self, object: u32) -> Result<(), Error> {
        let mut c = CommandBuilder::new(cc::FLUSH_CONTEXT);
        c.params().u32(object);
        self.run("FlushContext", c, 0).map(|_| ())
    }

    /// Reads a loaded or persistent object's public area and name.
    pub fn read_public(&mut self, object: u32) -> Result<(Public, Vec<u8>), Error> {
        let c = CommandBuilder::new(cc::READ_PUBLIC).handle(object);
        let resp = self.run("ReadPublic", c, 0)?;
        let mut p = Response::parse("ReadPublic", &resp, 0)?.params;
        let public = Public::parse_sized(&mut p)?;
        let name = p.tpm2b("name")?.to_vec();
        Ok((public, name))
    }

    /// Defines an NV index with an empty index password, authorized by `hierarchy`
    /// (owner or platform, empty password).
    pub fn nv_define_space(&mut self, hierarchy: u32, public: &NvPublic) -> Result<(), Error> {
        let mut c = CommandBuilder::new(cc::NV_DEFINE_SPACE)
            .handle(hierarchy)
            .password(b"");
        c.params().tpm2b("auth", &[])?;
        c.params().tpm2b("publicInfo", &public.marshal()?)?;
        self.run("NV_DefineSpace", c, 0).map(|_| ())
    }

    /// Removes an NV index.
    pub fn nv_undefine_space(&mut self, hierarchy: u32, index: u32) -> Result<(), Error> {
        let c = CommandBuilder::new(cc::NV_UNDEFINE_SPACE)
            .handle(hierarchy)
            .handle(index)
            .password(b"");
        self.run("NV_UndefineSpace", c, 0).map(|_| ())
    }

    /// Reads an NV index's public area and name.
    pub fn nv_read_public(&mut self, index: u32) -> Result<(NvPublic, Vec<u8>), Error> {
        let c = CommandBuilder::new(cc::NV_READ_PUBLIC).handle(index);
        let resp = self.run("NV_ReadPublic", c, 0)?;
        let mut p = Response::parse("NV_ReadPublic", &resp, 0)?.params;
        let public = NvPublic::parse_sized(&mut p)?;
        let name = p.tpm2b("nvName")?.to_vec();
        Ok((public, name))
    }

    fn nv_chunk(&mut self) -> usize {
        if let Some(n) = self.nv_chunk {
            return n;
        }
        let n = self
            .property(PT_NV_BUFFER_MAX)
            .ok()
            .and_then(|v| usize::try_from(v).ok())
            .filter(|v| *v >= 64)
            .unwrap_or(FALLBACK_NV_CHUNK)
            .min(1024);
        self.nv_chunk = Some(n);
        n
    }

    /// Reads `size` bytes at `offset` of an NV index with owner authorization, in one command.
    pub fn nv_read(&mut self, index: u32, size: u16, offset: u16) -> Result<Vec<u8>, Error> {
        let mut c = CommandBuilder::new(cc::NV_READ)
            .handle(handle::OWNER)
            .handle(index)
            .password(b"");
        c.params().u16(size).u16(offset);
        let resp = self.run("NV_Read", c, 0)?;
        let mut p = Response::parse("NV_Read", &resp, 0)?.params;
        let data = p.tpm2b("data")?;
        if data.len() != usize::from(size) {
            return Err(Error::Malformed {
                what: "NV_Read response",
                detail: format!("asked for {size} bytes, got {}", data.len()),
            });
        }
        Ok(data.to_vec())
    }

    /// Reads a whole NV index with owner authorization, in chunks the TPM accepts.
    pub fn nv_read_all(&mut self, index: u32) -> Result<Vec<u8>, Error> {
        let (public, _) = self.nv_read_public(index)?;
        let chunk = self.nv_chunk();
        let total = usize::from(public.data_size);
        let mut out = Vec::with_capacity(total);
        while out.len() < total {
            let n = chunk.min(total - out.len());
            // Both fit u16: total is a u16 and n <= total.
            let (n, off) = (n as u16, out.len() as u16);
            out.extend(self.nv_read(index, n, off)?);
        }
        Ok(out)
    }

    /// Writes `data` at `offset` of an NV index with owner authorization, in chunks.
    pub fn nv_write(&mut self, index: u32, data: &[u8], offset: u16) -> Result<(), Error> {
        let chunk = self.nv_chunk();
        let mut done = 0usize;
        while done < data.len() || (data.is_empty() && done == 0) {
            let part = &data[done..(done + chunk).min(data.len())];
            let off = u16::try_from(usize::from(offset) + done).map_err(|_| Error::TooLarge {
                what: "NV write offset",
                len: usize::from(offset) + done,
                max: usize::from(u16::MAX),
            })?;
            let mut c = CommandBuilder::new(cc::NV_WRITE)
                .handle(handle::OWNER)
                .handle(index)
                .password(b"");
            c.params().tpm2b("data", part)?;
            c.params().u16(off);
            self.run("NV_Write", c, 0)?;
            done += part.len();
            if data.is_empty() {
                break;
            }
        }
        Ok(())
    }

    /// Quotes PCRs with a signing key (empty key password), scheme chosen by the key.
    pub fn quote(
        &mut self,
        key: u32,
        qualifying_data: &[u8],
        selection: &PcrSelection,
    ) -> Result<Quote, Error> {
        let mut c = CommandBuilder::new(cc::QUOTE).handle(key).password(b"");
        c.params().tpm2b("qualifyingData", qualifying_data)?;
        c.params().u16(alg::NULL);
        selection.marshal(c.params())?;
        let resp = self.run("Quote", c, 0)?;
        let mut p = Response::parse("Quote", &resp, 0)?.params;
        let message = p.tpm2b("quoted")?.to_vec();
        let signature = RsaSignature::parse(&mut p)?;
        let attest = Attest::parse_quote(&message)?;
        Ok(Quote {
            message,
            attest,
            signature,
        })
    }

    /// Reads PCR values of one bank, in the order of `pcrs`.
    pub fn pcr_read(&mut self, bank: PcrBank, pcrs: &[u8]) -> Result<Vec<Vec<u8>>, Error> {
        let mut values: Vec<Option<Vec<u8>>> = vec![None; pcrs.len()];
        // A TPM returns at most 8 digests per call and drops the rest from its answer.
        for _ in 0..pcrs.len().max(1) {
            let missing: Vec<u8> = pcrs
                .iter()
                .zip(&values)
                .filter(|(_, v)| v.is_none())
                .map(|(p, _)| *p)
                .collect();
            if missing.is_empty() {
                break;
            }
            let mut c = CommandBuilder::new(cc::PCR_READ);
            PcrSelection::of(bank.alg(), missing.iter().copied()).marshal(c.params())?;
            let resp = self.run("PCR_Read", c, 0)?;
            let mut p = Response::parse("PCR_Read", &resp, 0)?.params;
            p.u32("pcrUpdateCounter")?;
            let returned = PcrSelection::parse(&mut p)?.selected(bank.alg());
            let count = p.u32("pcrValues.count")?;
            if usize::try_from(count).ok() != Some(returned.len()) || returned.is_empty() {
                return Err(Error::Malformed {
                    what: "PCR_Read response",
                    detail: format!("{count} digests for {} selected PCRs", returned.len()),
                });
            }
            for pcr in returned {
                let digest = p.tpm2b("pcrValues.digest")?;
                if digest.len() != bank.digest_size() {
                    return Err(Error::Malformed {
                        what: "PCR_Read response",
                        detail: format!("PCR {pcr} digest is {} bytes", digest.len()),
                    });
                }
                for (want, slot) in pcrs.iter().zip(values.iter_mut()) {
                    if *want == pcr && slot.is_none() {
                        *slot = Some(digest.to_vec());
                    }
                }
            }
        }
        values
            .into_iter()
            .zip(pcrs)
            .map(|(v, pcr)| {
                v.ok_or_else(|| Error::Malformed {
                    what: "PCR_Read response",
                    detail: format!("PCR {pcr} was never returned"),
                })
            })
            .collect()
    }

    /// Extends a PCR of one bank with a digest (empty PCR password).
    pub fn pcr_extend(&mut self, pcr: u8, bank: PcrBank, digest: &[u8]) -> Result<(), Error> {
        if digest.len() != bank.digest_size() {
            return Err(Error::Malformed {
                what: "PCR_Extend digest",
                detail: format!(
                    "{} bytes for a bank of {}-byte digests",
                    digest.len(),
                    bank.digest_size()
                ),
            });
        }
        let mut c = CommandBuilder::new(cc::PCR_EXTEND)
            .handle(u32::from(pcr))
            .password(b"");
        c.params().u32(1).u16(bank.alg()).bytes(digest);
        self.run("PCR_Extend", c, 0).map(|_| ())
    }

    /// Sends a raw command and returns the raw response (for tests and tools).
    pub fn transact_raw(&mut self, command: &[u8]) -> Result<Vec<u8>, Error> {
        self.transport.transact(command)
    }
}
