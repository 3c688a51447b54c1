//! Generates the Rust code for our `.proto` files with ttrpc-codegen's pure-Rust parser (no
//! protoc), into OUT_DIR.
//!
//! The generated files are `include!`d inside modules, where inner attributes (`#![...]`) and
//! inner doc comments (`//!`) are not allowed, so those lines are dropped after generation.

use std::path::{Path, PathBuf};

const KATA_PROTOS: &[&str] = &["agent", "health", "oci", "types", "csi"];

fn main() -> std::io::Result<()> {
    let out = PathBuf::from(std::env::var("OUT_DIR").map_err(std::io::Error::other)?);
    let kata_out = out.join("kata");
    std::fs::create_dir_all(&kata_out)?;
    let inputs: Vec<String> = KATA_PROTOS
        .iter()
        .map(|name| format!("proto/kata/{name}.proto"))
        .collect();
    for input in &inputs {
        println!("cargo:rerun-if-changed={input}");
    }
    println!("cargo:rerun-if-changed=build.rs");

    ttrpc_codegen::Codegen::new()
        .out_dir(&kata_out)
        .inputs(&inputs)
        .include("proto/kata")
        .rust_protobuf()
        .customize(ttrpc_codegen::Customize {
            async_all: true,
            ..Default::default()
        })
        .rust_protobuf_customize(ttrpc_codegen::ProtobufCustomize::default().gen_mod_rs(false))
        .run()?;

    let aa_out = out.join("aa");
    std::fs::create_dir_all(&aa_out)?;
    let aa_input = "proto/aa/attestation_agent.proto".to_string();
    println!("cargo:rerun-if-changed={aa_input}");
    ttrpc_codegen::Codegen::new()
        .out_dir(&aa_out)
        .inputs([&aa_input])
        .include("proto/aa")
        .rust_protobuf()
        .customize(ttrpc_codegen::Customize {
            async_all: true,
            ..Default::default()
        })
        .rust_protobuf_customize(ttrpc_codegen::ProtobufCustomize::default().gen_mod_rs(false))
        .run()?;

    let cdh_out = out.join("cdh");
    std::fs::create_dir_all(&cdh_out)?;
    let cdh_inputs = [
        "proto/cdh/api.proto".to_string(),
        "proto/cdh/keyprovider.proto".to_string(),
    ];
    for input in &cdh_inputs {
        println!("cargo:rerun-if-changed={input}");
    }
    ttrpc_codegen::Codegen::new()
        .out_dir(&cdh_out)
        .inputs(&cdh_inputs)
        .include("proto/cdh")
        .rust_protobuf()
        .customize(ttrpc_codegen::Customize {
            async_all: true,
            ..Default::default()
        })
        .rust_protobuf_customize(ttrpc_codegen::ProtobufCustomize::default().gen_mod_rs(false))
        .run()?;

    for dir in [&kata_out, &aa_out, &cdh_out] {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "rs") {
                strip_inner_attributes(&path)?;
            }
        }
    }
    Ok(())
}

fn strip_inner_attributes(path: &Path) -> std::io::Result<()> {
    let text = std::fs::read_to_string(path)?;
    let kept: Vec<&str> = text
        .lines()
        .filter(|line| {
            let t = line.trim_start();
            !(t.starts_with("#![") || t.starts_with("//!"))
        })
        .collect();
    std::fs::write(path, kept.join("\n"))
}
