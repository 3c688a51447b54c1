//! An ocicrypt command-line key provider for tests (`OCICRYPT_KEYPROVIDER_CONFIG` with
//! `"cmd": {"path": …}`): reads one key-provider request on stdin and writes the answer on
//! stdout, wrapping and unwrapping with a KEK from a local file the way coco-keyprovider does.
//!
//! - `keywrap`: the encryption parameter (after `provider:attestation-agent:`) is
//!   coco-keyprovider's `keyid=kbs:///…::keypath=/path/to/kek`.
//! - `keyunwrap`: the KEK file is the first command-line argument.

use std::io::{Read as _, Write as _};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

fn main() -> anyhow::Result<()> {
    let mut input = Vec::new();
    std::io::stdin().read_to_end(&mut input)?;
    let req: Value = serde_json::from_slice(&input).context("request is not JSON")?;
    let reply = match req["op"].as_str() {
        Some("keywrap") => {
            let params = &req["keywrapparams"];
            let opts = STANDARD
                .decode(params["optsdata"].as_str().context("no optsdata")?)
                .context("optsdata")?;
            let param = params["ec"]["Parameters"]["attestation-agent"][0]
                .as_str()
                .context("no attestation-agent parameter")?;
            let param = String::from_utf8(STANDARD.decode(param)?)?;
            let (mut kid, mut path) = (None, None);
            for kv in param.split("::") {
                match kv.split_once('=') {
                    Some(("keyid", v)) => kid = Some(v.to_string()),
                    Some(("keypath", v)) => path = Some(v.to_string()),
                    _ => bail!("unknown parameter {kv:?}"),
                }
            }
            let kek = kek(&path.context("no keypath")?)?;
            let packet = peerpod_image_crypt::testing::wrap(&opts, &kek, &kid.context("no keyid")?);
            json!({"keywrapresults": {"annotation": STANDARD.encode(packet)}})
        }
        Some("keyunwrap") => {
            let path = std::env::args()
                .nth(1)
                .context("usage: image-crypt-keyprovider KEK-FILE")?;
            let packet = STANDARD
                .decode(
                    req["keyunwrapparams"]["annotation"]
                        .as_str()
                        .context("no annotation")?,
                )
                .context("annotation")?;
            let opts = peerpod_image_crypt::testing::unwrap(&packet, &kek(&path)?)?;
            json!({"keyunwrapresults": {"optsdata": STANDARD.encode(&*opts)}})
        }
        _ => bail!("op is neither keywrap nor keyunwrap"),
    };
    std::io::stdout().write_all(reply.to_string().as_bytes())?;
    Ok(())
}

fn kek(path: &str) -> anyhow::Result<[u8; 32]> {
    let bytes = std::fs::read(path).with_context(|| format!("read the KEK {path}"))?;
    bytes
        .as_slice()
        .try_into()
        .map_err(|_| anyhow::anyhow!("the KEK {path} is not 32 bytes"))
}
